"""``conveyor demo``: the whole system on a throwaway SQLite file, in about fifteen seconds.

It starts real ``conveyor worker`` processes, submits a mixed workload (every
priority level, delayed tasks, flaky tasks that recover, tasks that end in the
dead-letter queue, a timeout, a few cancellations) and a small workflow (fan-out,
fan-in reading its parents' results), shows progress per priority
band while the workers drain it, then prints a summary and stops the workers
with SIGTERM, checking that each exits 0. It only uses the public client API.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from conveyor.app import Conveyor
from conveyor.backends.base import TaskFilter
from conveyor.demo_report import Summary, print_summary, summarize
from conveyor.demo_tasks import REGION_SALES, make_app
from conveyor.errors import ConveyorError, InvalidInput
from conveyor.models import Task, TaskSpec
from conveyor.priority import NAMED, Band, band_of
from conveyor.workflows import Workflow

DEMO_LABEL = "demo"
WAIT_LIMIT = 50.0  # seconds for the workload to finish before the demo gives up


@dataclass(frozen=True, slots=True)
class DemoOptions:
    workers: int = 2
    concurrency: int = 8
    url: str | None = None
    as_json: bool = False


def run_demo(opts: DemoOptions, console: Console | None = None) -> int:
    """Run the demo; returns the exit code (0 when everything behaved)."""
    console = console or Console(stderr=opts.as_json, highlight=False)
    tmp = Path(tempfile.mkdtemp(prefix="conveyor-demo-"))
    try:
        return _run(opts, tmp, console)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(opts: DemoOptions, tmp: Path, console: Console) -> int:
    url = opts.url or f"sqlite:///{tmp / 'demo.db'}"
    if url.split(":", 1)[0] == "memory":
        raise InvalidInput("the demo runs worker processes, which cannot share a memory:// backend")
    app = make_app(url)
    try:
        app.migrate()  # once, before the workers race to do it
        workers = WorkerProcesses(opts.workers, opts.concurrency, _worker_env(url, tmp), tmp)
        started = time.time()
        try:
            workers.start()
            workers.wait_registered(app)
            console.print(f"[bold]conveyor demo[/] on {url}: {opts.workers} workers x {opts.concurrency} slots")
            ids = submit_workload(app, console)
            workflow_id, nodes = submit_workflow(app, console)
            ids += nodes
            finished = watch(app, ids, workers, console)
            console.print()
        finally:
            codes = workers.stop()
        summary = summarize(load(app, ids), started, codes)
        summary.workflow = workflow_view(app.get_workflow(workflow_id))
    finally:
        app.close()
    print_summary(summary, console, as_json=opts.as_json)
    return _verdict(summary, finished, codes, workers, console)


def _verdict(summary: Summary, finished: bool, codes: list[int], workers: WorkerProcesses, console: Console) -> int:
    if not finished:
        console.print(f"[red]the workload did not finish within {WAIT_LIMIT:.0f} s[/]")
    if any(codes):
        console.print(f"[red]workers exited with {codes}, expected 0[/]\n{workers.log_tail()}", markup=False)
    return 0 if finished and not any(codes) and summary.total else 1


def _worker_env(url: str, tmp: Path) -> dict[str, str]:
    """Workers see the demo's URL and an empty config, so ./conveyor.yaml cannot interfere."""
    config = tmp / "conveyor.yaml"
    config.write_text("{}\n")
    return {
        **os.environ,
        "CONVEYOR_URL": url,
        "CONVEYOR_CONFIG": str(config),
        "CONVEYOR_DEMO_DIR": str(tmp),
        "CONVEYOR_WORKER__SHUTDOWN_GRACE": "10",
    }


# --- workers -------------------------------------------------------------------------


class WorkerProcesses:
    """``conveyor worker`` subprocesses, each logging to a file in the demo's folder."""

    def __init__(self, count: int, concurrency: int, env: dict[str, str], folder: Path) -> None:
        self.count, self.concurrency, self.env, self.folder = count, concurrency, env, folder
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        cmd = [sys.executable, "-m", "conveyor", "worker", "--app", "conveyor.demo_tasks:app"]
        cmd += ["--pool", "async", "--concurrency", str(self.concurrency)]
        for i in range(self.count):
            with open(self.folder / f"worker-{i}.log", "wb") as log:
                # A session of their own: Ctrl-C reaches the demo, which stops them with SIGTERM.
                proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=log, start_new_session=True)
            self.procs.append(proc)

    def wait_registered(self, app: Conveyor, limit: float = 20.0) -> None:
        """Block until every worker has registered, or fail with its log."""
        deadline = time.monotonic() + limit
        pids = {p.pid for p in self.procs}
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                raise ConveyorError(f"a demo worker exited at start-up: {self.log_tail(1)}")
            live = {w.pid for w in app.workers() if w.state != "offline"}
            if pids <= live:
                return
            time.sleep(0.1)
        raise ConveyorError(f"demo workers did not register within {limit:.0f} s: {self.log_tail(1)}")

    def stop(self, grace: float = 20.0) -> list[int]:
        """SIGTERM each worker (a graceful shutdown) and return the exit codes."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(grace))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        return codes

    def log_tail(self, lines: int = 10) -> str:
        tails = []
        for log in sorted(self.folder.glob("worker-*.log")):
            text = log.read_text(errors="replace").strip().splitlines()[-lines:]
            tails.append(f"{log.name}: " + " | ".join(text))
        return "\n".join(tails)


# --- workload ------------------------------------------------------------------------


def workload(rng: random.Random) -> list[TaskSpec]:
    """About 280 tasks: all four priority levels, delays, recoveries, dead letters, a
    timeout, and 30 tasks on a queue rate-limited to 20 starts per second."""
    run = f"{os.getpid()}-{int(time.time())}"
    specs = [_spec("demo.work", {"ms": rng.randint(200, 1200)}, level) for level in NAMED for _ in range(50)]
    specs += [
        _spec("demo.work", {"ms": 100}, rng.choice(["normal", "low"]), delay=rng.uniform(2, 8)) for _ in range(20)
    ]
    specs += [
        _spec("demo.flaky", {"key": f"{run}-{i}", "failures": 1 + i % 2}, rng.choice(["high", "normal"]))
        for i in range(20)
    ]
    specs += [_spec("demo.always_fails", {"order": 1000 + i}, "low") for i in range(6)]
    specs += [_spec("demo.reject", {"record": 40 + i}, "normal") for i in range(4)]
    specs += [_spec("demo.slow", {"seconds": 5}, "high") for _ in range(3)]
    specs += [_spec("demo.limited", {"ms": 10}, "normal") for _ in range(30)]  # 20/s, cluster-wide
    rng.shuffle(specs)
    return specs


def _spec(name: str, args: dict[str, object], level: str, delay: float | None = None) -> TaskSpec:
    return TaskSpec(name=name, args=args, priority=NAMED[level], delay=delay, labels=[DEMO_LABEL])


def submit_workload(app: Conveyor, console: Console) -> list[str]:
    """Submit in atomic batches, then cancel a few far-future tasks; returns every id."""
    specs = workload(random.Random(7))
    ids = [h.id for i in range(0, len(specs), 50) for h in app.enqueue_many(specs[i : i + 50])]
    later = app.enqueue_many([_spec("demo.work", {"ms": 10}, "low", delay=600) for _ in range(3)])
    for handle in later:
        app.cancel(handle.id)
    console.print(f"submitted {len(ids) + len(later)} tasks ({len(later)} of them cancelled at once)")
    return ids + [h.id for h in later]


def submit_workflow(app: Conveyor, console: Console) -> tuple[str, list[str]]:
    """A small DAG in one atomic submit: plan -> fetch x 4 regions (fan-out) -> merge (fan-in)."""
    wf = app.workflow()
    wf.node("plan", "demo.work", {"ms": 100}, labels=[DEMO_LABEL])
    fetches = [
        wf.node(f"fetch-{region}", "demo.fetch", {"region": region}, depends_on=["plan"], labels=[DEMO_LABEL])
        for region in REGION_SALES
    ]
    wf.node("merge", "demo.merge", depends_on=fetches, labels=[DEMO_LABEL], priority="high")
    workflow = wf.submit()
    console.print(f"submitted workflow {workflow.id}: plan -> {len(fetches)} fetches -> merge")
    return workflow.id, [t.id for t in workflow.nodes.values()]


def workflow_view(workflow: Workflow) -> dict[str, object]:
    """The summary's view of the demo workflow: state, nodes, and what the fan-in computed."""
    return {
        "id": workflow.id,
        "state": workflow.state.value,
        "nodes": {key: task.state.value for key, task in workflow.nodes.items()},
        "result": workflow.nodes["merge"].result,
    }


# --- progress ------------------------------------------------------------------------


def load(app: Conveyor, ids: list[str]) -> list[Task]:
    """The demo's tasks as stored now (the label narrows the scan on a shared database)."""
    wanted, found, cursor = set(ids), [], None
    while True:
        page = app.list_tasks(TaskFilter(label=DEMO_LABEL), limit=500, cursor=cursor)
        found += [t for t in page.items if t.id in wanted]
        cursor = page.next_cursor
        if not cursor:
            return found


def watch(app: Conveyor, ids: list[str], workers: WorkerProcesses, console: Console) -> bool:
    """Live bars per priority band until every task is terminal; ``False`` on timeout."""
    progress = Progress(
        TextColumn("{task.description:>14}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )
    bars: dict[Band, TaskID] = {}
    status = Text()
    deadline = time.monotonic() + WAIT_LIMIT
    with Live(Group(progress, status), console=console, refresh_per_second=10):
        while True:
            tasks = load(app, ids)
            _update(progress, bars, tasks)
            states = Counter(t.state.value for t in tasks)
            status.plain = "  ".join(f"{k} {v}" for k, v in sorted(states.items()))
            if all(t.terminal for t in tasks) or time.monotonic() > deadline:
                return all(t.terminal for t in tasks)
            if any(p.poll() is not None for p in workers.procs):
                raise ConveyorError(f"a demo worker died: {workers.log_tail(3)}")
            time.sleep(0.2)


def _update(progress: Progress, bars: dict[Band, TaskID], tasks: list[Task]) -> None:
    for band in Band:
        in_band = [t for t in tasks if band_of(t.priority) == band]
        if band not in bars:
            bars[band] = progress.add_task(f"{band.value} band", total=len(in_band))
        progress.update(bars[band], completed=sum(t.terminal for t in in_band), total=len(in_band))
