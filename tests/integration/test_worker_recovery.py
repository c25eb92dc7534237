"""Crashes, shutdowns, cancellation and fencing, with worker subprocesses sharing one store.

Every test here runs on each persistent engine (SQLite, and PostgreSQL and Redis when
their backends are built): ``db_url`` below overrides the SQLite-only conftest fixture.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, FailureReason, State
from conveyor.backends.base import ClaimParams, HeartbeatParams, Lease, Outcome, ReapParams, ReleaseParams
from conveyor.models import WorkerState
from conveyor.task import SubmitOptions
from tests.contract.helpers import engine_urls, format_url
from tests.integration.support import SpawnWorker, finished, transitions, wait_until
from tests.integration.tasks_app import attempt_times, build_app, marks_of, read_log
from tests.services import drop_store


def persistent_engines() -> list[Any]:
    """``pytest.param`` per engine that worker subprocesses can share (not memory)."""
    return [pytest.param(url, id=engine) for engine, url in engine_urls().items() if engine != "memory"]


@pytest.fixture(params=persistent_engines())
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """One store per test on each persistent engine, dropped afterwards."""
    url = format_url(str(request.param), str(tmp_path))
    yield url
    drop_store(url)


def test_killed_worker_tasks_are_recovered_and_succeed(client: Conveyor, workers: SpawnWorker, marks: Path) -> None:
    short_lease = {"CONVEYOR_WORKER__LEASE_SECONDS": "1"}
    handles = [client.submit("it.slow", {"marks": str(marks), "key": f"t{i}", "seconds": 1.5}) for i in range(6)]
    doomed = workers(concurrency=4, env=short_lease)
    wait_until(lambda: len(marks_of(marks, "start")) == 4, what="four tasks to start")
    doomed.signal(signal.SIGKILL)
    assert doomed.wait(5) == -signal.SIGKILL
    killed = {key for key, pid in marks_of(marks, "start") if pid == doomed.pid}
    assert len(killed) == 4
    assert {t.args["key"] for t in map(client.get, (h.id for h in handles)) if t.state == State.RUNNING} == killed

    rescuer = workers(concurrency=4, env=short_lease)
    tasks = finished(client, *handles)

    assert all(t.state == State.SUCCEEDED for t in tasks), [(t.args["key"], t.state) for t in tasks]
    done = Counter(key for key, pid in marks_of(marks, "done") if pid == rescuer.pid)
    assert done == Counter(f"t{i}" for i in range(6))  # each finished once, by the rescuer
    for t in tasks:
        if t.args["key"] in killed:
            assert t.attempts >= 2
            assert "lease_expired" in transitions(t)
        else:
            assert t.attempts == 1


def test_heartbeats_keep_a_task_running_longer_than_its_lease(
    client: Conveyor, workers: SpawnWorker, marks: Path
) -> None:
    short_lease = {"CONVEYOR_WORKER__LEASE_SECONDS": "1"}
    handle = client.submit("it.slow", {"marks": str(marks), "key": "long", "seconds": 2.5})
    workers(env=short_lease)
    workers(env=short_lease)  # a second reaper, eager to recover anything that lapses
    (task,) = finished(client, handle)

    assert (task.state, task.attempts) == (State.SUCCEEDED, 1)
    assert "lease_expired" not in transitions(task)
    assert len(marks_of(marks, "start")) == 1


def test_sigterm_lets_running_tasks_finish_and_releases_unstarted_ones(
    client: Conveyor, workers: SpawnWorker, marks: Path
) -> None:
    handles = [client.submit("it.slow", {"marks": str(marks), "key": f"t{i}", "seconds": 1.0}) for i in range(4)]
    worker = workers(concurrency=2, env={"CONVEYOR_WORKER__PREFETCH": "2"})  # claims 4, starts 2
    wait_until(lambda: len(marks_of(marks, "start")) == 2, what="two tasks to start")
    wait_until(lambda: all(client.get(h.id).state == State.RUNNING for h in handles), what="all four claimed")

    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0, worker.output()

    started = {key for key, _ in marks_of(marks, "start")}
    assert {key for key, _ in marks_of(marks, "done")} == started
    assert marks_of(marks, "stopped") == []
    tasks = [client.get(h.id) for h in handles]
    for t in tasks:
        if t.args["key"] in started:
            assert (t.state, t.attempts, t.result) == (State.SUCCEEDED, 1, t.args["key"])
        else:
            assert (t.state, t.attempts) == (State.PENDING, 0)  # released without counting an attempt
            assert transitions(t)[-2:] == ["claim", "release"]
            assert t.worker_id is None and t.lease_expires_at is None
    (info,) = [w for w in client.workers() if w.pid == worker.pid]
    assert info.state == WorkerState.OFFLINE


@pytest.mark.parametrize("pool", ["async", "threads", "processes"])
def test_ctrl_c_in_a_terminal_shuts_down_gracefully_for_every_pool(
    client: Conveyor, workers: SpawnWorker, tmp_path: Path, pool: str
) -> None:
    # A terminal's Ctrl-C sends SIGINT to the whole process group: process-pool children too.
    counter = str(tmp_path / "sleepy")
    handle = client.submit("it.sleepy_sync", {"counter": counter, "seconds": 0.2}, SubmitOptions(timeout=10))
    worker = workers(pool=pool, concurrency=1)
    wait_until(lambda: attempt_times(counter), what="the task to start")

    os.killpg(worker.pid, signal.SIGINT)
    assert worker.wait(15) == 0, worker.output()
    task = client.get(handle.id)
    seen = (task.state, task.attempts, task.result)
    assert seen == (State.SUCCEEDED, 1, "woke up"), (seen, task.history, worker.output()[-3000:])


def test_second_signal_exits_at_once(client: Conveyor, workers: SpawnWorker, marks: Path) -> None:
    handle = client.submit("it.slow", {"marks": str(marks), "key": "long", "seconds": 30})
    worker = workers()
    wait_until(lambda: marks_of(marks, "start"), what="the task to start")

    worker.signal(signal.SIGTERM)
    wait_until(lambda: "finishing in-flight" in worker.output(), what="the first signal to be handled")
    worker.signal(signal.SIGTERM)
    assert worker.wait(5) != 0
    task = client.get(handle.id)
    assert task.state == State.RUNNING  # its lease will lapse and another worker recovers it
    assert marks_of(marks, "done") == []


@pytest.mark.parametrize("pool", ["async", "threads"])
def test_thread_stuck_past_its_timeout_neither_blocks_work_nor_the_exit(
    client: Conveyor, workers: SpawnWorker, tmp_path: Path, pool: str
) -> None:
    counter = str(tmp_path / "sleepy")
    stuck = client.submit("it.sleepy_sync", {"counter": counter, "seconds": 60}, SubmitOptions(max_retries=0))
    worker = workers(pool=pool, concurrency=1)
    assert finished(client, stuck)[0].failure_reason == FailureReason.TIMEOUT

    # the abandoned thread still sleeps; the worker's one slot must still run sync work
    after = client.submit("it.record", {"log": str(tmp_path / "log"), "tag": "after"})
    assert finished(client, after, timeout=10)[0].state == State.SUCCEEDED
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0, worker.output()


def test_cancelled_pending_task_never_runs(client: Conveyor, workers: SpawnWorker, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    doomed = client.submit("it.record", {"log": log, "tag": "doomed"})
    assert client.cancel(doomed.id).state == State.CANCELLED
    later = client.submit("it.record", {"log": log, "tag": "later"})
    workers(concurrency=1)
    finished(client, later)

    task = client.get(doomed.id)
    assert (task.state, task.attempts, task.started_at) == (State.CANCELLED, 0, None)
    assert transitions(task)[-1] == "cancel"
    assert read_log(log) == ["later"]


def test_cancelled_running_task_is_stopped_through_its_lost_lease(
    client: Conveyor, workers: SpawnWorker, marks: Path, tmp_path: Path
) -> None:
    handle = client.submit("it.slow", {"marks": str(marks), "key": "long", "seconds": 30})
    workers(concurrency=2)
    wait_until(lambda: marks_of(marks, "start"), what="the task to start")

    cancelled = client.cancel(handle.id)
    assert cancelled.state == State.CANCELLED
    wait_until(lambda: marks_of(marks, "stopped"), what="the worker to stop the attempt")

    task = client.get(handle.id)
    assert (task.state, task.result, task.attempts) == (State.CANCELLED, None, 1)
    assert transitions(task)[-1] == "cancel"
    assert marks_of(marks, "done") == []
    # the worker carries on with other work
    log = str(tmp_path / "log")
    after = client.submit("it.record", {"log": log, "tag": "after"})
    assert finished(client, after)[0].state == State.SUCCEEDED


def test_late_completion_of_a_cancelled_task_is_rejected(client: Conveyor, workers: SpawnWorker, marks: Path) -> None:
    handle = client.submit("it.stubborn", {"marks": str(marks), "key": "stubborn", "seconds": 30})
    worker = workers()
    wait_until(lambda: marks_of(marks, "start"), what="the task to start")
    client.cancel(handle.id)
    wait_until(lambda: marks_of(marks, "stopped"), what="the worker to cancel the attempt")
    wait_until(lambda: "not recorded" in worker.output(), what="the worker to report the refused outcome")

    task = client.get(handle.id)
    assert (task.state, task.result) == (State.CANCELLED, None)  # "late" was not written
    assert transitions(task)[-1] == "cancel"


def test_two_workers_never_run_the_same_attempt_twice(client: Conveyor, workers: SpawnWorker, marks: Path) -> None:
    long_lease = {"CONVEYOR_WORKER__LEASE_SECONDS": "10"}  # no lease may lapse under load here
    first = workers(concurrency=8, env=long_lease)
    second = workers(concurrency=8, env=long_lease)
    n = 300
    specs = [("it.once", {"marks": str(marks), "key": f"t{i}", "pause": 0.005}) for i in range(n)]
    handles = [client.submit(name, args) for name, args in specs]
    tasks = finished(client, *handles, timeout=60)

    runs = Counter(key for key, _ in marks_of(marks, "ran"))
    assert runs == Counter(f"t{i}" for i in range(n))  # every task exactly once
    assert all(t.state == State.SUCCEEDED and t.attempts == 1 for t in tasks)
    pids = {pid for _, pid in marks_of(marks, "ran")}
    assert pids <= {first.pid, second.pid}
    assert len(pids) == 2, "both workers should have taken part"


# --- fencing at the engine level ----------------------------------------------------------------


@pytest.fixture(params=["memory", *(p.id for p in persistent_engines())])
def fence_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    url = (
        f"memory://fence-{tmp_path.name}"
        if request.param == "memory"
        else format_url(engine_urls()[request.param], str(tmp_path))
    )
    yield url
    drop_store(url)


async def test_completion_with_a_stale_lease_token_is_rejected(fence_url: str) -> None:
    app = build_app(fence_url)
    try:
        handle = await app.submit_async("it.record", {"log": "x", "tag": "x"})
        backend = await app.backend()
        (old,) = (await backend.task_claim(ClaimParams("w-old", 1, lease_seconds=0.1))).tasks
        await asyncio.sleep(0.15)
        assert await backend.task_reap_expired(ReapParams()) == [handle.id]
        (new,) = (await backend.task_claim(ClaimParams("w-new", 1, lease_seconds=30))).tasks
        assert new.id == old.id
        assert new.lease_token != old.lease_token
        assert new.attempts == 2

        late = Outcome(old.id, old.lease_token, "complete", "w-old", result="stale")
        assert await backend.task_finish_many([late]) == [False]
        assert await backend.task_release(ReleaseParams("w-old", [Lease(old.id, old.lease_token)])) == 0
        lost = await backend.worker_heartbeat(
            HeartbeatParams("w-old", WorkerState.BUSY, [Lease(old.id, old.lease_token)], lease_seconds=30)
        )
        assert lost == [old.id]
        task = await app.get_async(handle.id)
        assert (task.state, task.worker_id, task.result) == (State.RUNNING, "w-new", None)

        fresh = Outcome(new.id, new.lease_token, "complete", "w-new", result="fresh")
        assert await backend.task_finish_many([fresh]) == [True]
        task = await app.get_async(handle.id)
        assert (task.state, task.result) == (State.SUCCEEDED, "fresh")
        assert transitions(task)[1:] == ["claim", "lease_expired", "claim", "complete"]
    finally:
        await app.aclose()
