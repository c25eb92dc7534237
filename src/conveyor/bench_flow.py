"""Claim throughput with flow control active, against the plain claim.

``python -m conveyor.bench_flow [--tasks N] [--batch B] [--url sqlite:///path]``

Three runs on a fresh store each (a temporary SQLite file unless ``--url`` names
another engine), every run claiming ``N`` ready tasks in batches of ``B`` and
completing each batch, as a worker would:

* ``plain``: no limits, no dependencies, aging off (the one-statement claim);
* ``limits+deps``: the queue and the task name have rate and concurrency limits
  (high enough never to bind, so the cost is the bookkeeping) and a breaker, and
  every task was ``waiting`` on a parent that succeeded;
* ``limits+deps+aging``: the same with priority aging on.

It prints claims per second for each and the ratio to ``plain`` (the target is at
least 0.8). Only engine calls are timed: no worker, no task code.

Then a workflow of ``--nodes`` nodes (one root, a fan-out to ``nodes - 2`` no-op
tasks, a fan-in to one sink) is submitted at once and run by one in-process worker
(async pool): it prints the time to store the graph and the time until the workflow
reads ``succeeded``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from conveyor.backends import make_backend
from conveyor.backends.base import Backend, ClaimParams, EnqueueParams, Outcome
from conveyor.features.flow import QueueUpdate
from conveyor.ids import new_id
from conveyor.models import NewTask


def _task(run_at: float, depends_on: list[str] | None = None, priority: int = 5) -> NewTask:
    return NewTask(
        id=new_id(),
        name="bench.flow",
        args={"n": 1},
        queue="q",
        priority=priority,
        run_at=run_at,
        created_at=run_at,
        depends_on=depends_on or [],
    )


async def _prepare(backend: Backend, tasks: int, *, controlled: bool) -> None:
    now = time.time()
    if not controlled:
        for start in range(0, tasks, 1000):
            batch = [_task(now, priority=start // 1000 % 11) for _ in range(min(1000, tasks - start))]
            await backend.task_enqueue_many(EnqueueParams(batch))
        return
    await backend.queue_update(QueueUpdate("q", rate_limit="1000000/s", concurrency=100_000))
    await backend.queue_update(
        QueueUpdate("bench.flow", kind="task", rate_limit="1000000/s", concurrency=100_000, breaker_threshold=50)
    )
    for start in range(0, tasks, 1000):
        parent = _task(now)
        children = [_task(now, [parent.id], priority=start // 1000 % 11) for _ in range(min(1000, tasks - start))]
        await backend.task_enqueue_many(EnqueueParams([parent]))
        await backend.task_enqueue_many(EnqueueParams(children))
        claim = await backend.task_claim(ClaimParams("bench-parent", 1, 30.0, ("q",)))
        (held,) = claim.tasks
        await backend.task_finish_many([Outcome(held.id, held.lease_token, "complete")])  # releases the children


async def _drain(backend: Backend, tasks: int, batch: int, aging: float | None) -> float:
    """Claims per second over ``tasks`` claims (claim time only; completions untimed)."""
    claimed, spent = 0, 0.0
    params = ClaimParams("bench", batch, 30.0, ("q",), aging_interval=aging)
    while claimed < tasks:
        t0 = time.perf_counter()
        got = (await backend.task_claim(params)).tasks
        spent += time.perf_counter() - t0
        if not got:
            raise RuntimeError(f"claim returned nothing after {claimed} of {tasks} tasks")
        claimed += len(got)
        await backend.task_finish_many([Outcome(t.id, t.lease_token, "complete") for t in got])
    return claimed / spent


async def measure(url: str, tasks: int, batch: int, *, controlled: bool, aging: float | None = None) -> float:
    backend = make_backend(url)
    await backend.open()
    try:
        await _prepare(backend, tasks, controlled=controlled)
        return await _drain(backend, tasks, batch, aging)
    finally:
        await backend.close()


async def run(tasks: int, batch: int, url: str | None) -> dict[str, float]:
    results: dict[str, float] = {}
    runs = {"plain": (False, None), "limits+deps": (True, None), "limits+deps+aging": (True, 60.0)}
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-flow-") as tmp:
        for i, (label, (controlled, aging)) in enumerate(runs.items()):
            where = url.format(n=i) if url else f"sqlite:///{Path(tmp) / f'run{i}.db'}"
            results[label] = await measure(where, tasks, batch, controlled=controlled, aging=aging)
    return results


async def measure_workflow(url: str, nodes: int) -> tuple[float, float]:
    """Seconds to submit a fan-out/fan-in workflow of ``nodes`` nodes, and to finish it."""
    from conveyor.bench import NOOP
    from conveyor.bench_tasks import make_app
    from conveyor.worker import Worker, WorkerOptions
    from conveyor.workflows import WorkflowState

    app = make_app(url)
    wf = app.workflow()
    wf.node("root", NOOP)
    middle = [f"n{i}" for i in range(nodes - 2)]
    for key in middle:
        wf.node(key, NOOP, depends_on=["root"])
    wf.node("sink", NOOP, depends_on=middle)
    await app.backend()  # open (and migrate) outside the clock
    worker = Worker(app, WorkerOptions(concurrency=50, scheduler=False))
    runner = asyncio.create_task(worker.run())
    try:
        t0 = time.perf_counter()
        stored = await wf.submit_async()
        submitted = time.perf_counter() - t0
        state = stored.state
        while state not in (WorkflowState.SUCCEEDED, WorkflowState.FAILED, WorkflowState.CANCELLED):
            await asyncio.sleep(0.01)
            state = (await app.get_workflow_async(stored.id)).state
        if state is not WorkflowState.SUCCEEDED:
            raise RuntimeError(f"workflow ended {state}")
        return submitted, time.perf_counter() - t0
    finally:
        worker.stop()
        await runner
        await app.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m conveyor.bench_flow", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=1000, help="nodes of the fan-out/fan-in workflow (0: skip)")
    parser.add_argument("--url", default=None, help="an engine URL; {n} is replaced by the run number")
    args = parser.parse_args(argv)
    results = asyncio.run(run(args.tasks, args.batch, args.url))
    plain = results["plain"]
    for label, rate in results.items():
        print(f"{label:<20} {rate:>10,.0f} claims/s   {rate / plain:5.2f} x plain")
    if args.nodes >= 3:
        with tempfile.TemporaryDirectory(prefix="conveyor-bench-flow-") as tmp:
            url = args.url.format(n="wf") if args.url else f"sqlite:///{Path(tmp) / 'workflow.db'}"
            submitted, done = asyncio.run(measure_workflow(url, args.nodes))
        print(
            f"workflow of {args.nodes} nodes (fan-out, fan-in): submitted in {submitted * 1000:,.0f} ms, "
            f"succeeded after {done:.2f} s"
        )


if __name__ == "__main__":
    main()
