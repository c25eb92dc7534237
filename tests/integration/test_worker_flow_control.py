"""Flow control with real worker subprocesses on one SQLite file: several workers
together never exceed a rate or concurrency limit declared in code, and a worker never
claims a task whose tags it lacks."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.states import State
from tests.integration import flow_app
from tests.integration.support import FAST_WORKER_ENV, ROOT, WorkerProcess, finished, wait_registered, worker_command

APP = "tests.integration.flow_app:app"


@pytest.fixture
def flow_client(db_url: str) -> Iterator[Conveyor]:
    app = flow_app.build_app(db_url)
    app.migrate()
    yield app
    app.close()


@pytest.fixture
def start(flow_client: Conveyor, db_url: str, tmp_path: Path) -> Iterator[object]:
    started: list[WorkerProcess] = []

    def _start(*extra: str, concurrency: int = 4) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env |= FAST_WORKER_ENV | {"CONVEYOR_URL": db_url, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        log = tmp_path / f"worker-{len(started)}.log"
        with log.open("wb") as out:
            cmd = worker_command(APP, concurrency, "threads", ()) + list(extra)
            proc = subprocess.Popen(
                cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        worker = WorkerProcess(proc, log)
        started.append(worker)
        wait_registered(flow_client, worker)
        return worker

    yield _start
    for worker in started:
        worker.kill_group()


def _max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def test_workers_together_never_exceed_a_rate_limit(flow_client: Conveyor, start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "runs"
    folder.mkdir()
    for _ in range(3):
        start()
    handles = [flow_client.submit("flow.limited", {"folder": str(folder), "key": f"k{i}"}) for i in range(25)]
    tasks = finished(flow_client, *handles, timeout=30)
    assert all(t.state is State.SUCCEEDED for t in tasks)
    claims = [t.started_at.timestamp() for t in tasks if t.started_at]
    assert _max_in_window(claims, 1.0) <= 10  # "10/s", cluster-wide, by the engine's clock
    assert len({h.worker_id for t in tasks for h in t.history if h.transition == "claim"}) >= 2  # shared
    assert max(claims) - min(claims) >= 1.3  # 25 tasks at 10/s take more than 2 s


def test_workers_together_never_exceed_a_concurrency_limit(flow_client: Conveyor, start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "runs"
    folder.mkdir()
    for _ in range(3):
        start()
    args = [{"folder": str(folder), "key": f"k{i}", "seconds": 0.15} for i in range(12)]
    handles = [flow_client.submit("flow.held", a) for a in args]
    finished(flow_client, *handles, timeout=30)
    events = sorted([(s, 1) for s, _ in flow_app.spans(folder)] + [(e, -1) for _, e in flow_app.spans(folder)])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak == flow_app.CONCURRENCY


def test_worker_never_claims_a_task_whose_tags_it_lacks(flow_client: Conveyor, start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "runs"
    folder.mkdir()
    plain_worker = start()
    gpu = [flow_client.submit("flow.gpu", {"folder": str(folder), "key": f"g{i}"}) for i in range(8)]
    plain = [flow_client.submit("flow.plain", {"folder": str(folder), "key": f"p{i}"}) for i in range(8)]
    finished(flow_client, *plain)
    assert all(flow_client.get(h.id).state is State.PENDING for h in gpu)
    why = flow_client.explain(gpu[0].id)
    assert why.reason == "no_worker_with_tags" and why.missing_tags == ["gpu"]
    gpu_worker = start("--tags", "gpu,ssd")
    tasks = finished(flow_client, *gpu)
    ids = {w.pid: w.id for w in flow_client.workers()}
    claimers = {entry.worker_id for t in tasks for entry in t.history if entry.transition == "claim"}
    assert claimers == {ids[gpu_worker.pid]}
    assert ids[plain_worker.pid] not in claimers
