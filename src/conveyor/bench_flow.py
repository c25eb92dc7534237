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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m conveyor.bench_flow", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--url", default=None, help="an engine URL; {n} is replaced by the run number")
    args = parser.parse_args(argv)
    results = asyncio.run(run(args.tasks, args.batch, args.url))
    plain = results["plain"]
    for label, rate in results.items():
        print(f"{label:<20} {rate:>10,.0f} claims/s   {rate / plain:5.2f} x plain")


if __name__ == "__main__":
    main()
