"""Execution rules end to end: a SQLite file, ``conveyor worker`` subprocesses, real pools.

Order, retries and the dead-letter queue, timeouts, and what each pool runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conveyor import Conveyor, FailureReason, State
from conveyor.backends.base import TaskFilter
from conveyor.task import SubmitOptions
from tests.integration.support import SpawnWorker, finished, transitions
from tests.integration.tasks_app import TIMEOUT, attempt_times, read_log


def test_worker_runs_tasks_by_priority_band_then_in_submit_order(
    client: Conveyor, workers: SpawnWorker, tmp_path: Path
) -> None:
    log = str(tmp_path / "order.log")
    plan = [
        ("low-1", "low"),
        ("normal-1", "normal"),
        ("critical-1", "critical"),
        ("low-2", 1),
        ("high-1", "high"),
        ("normal-2", 5),
        ("critical-2", 10),
        ("high-2", 9),
        ("normal-3", 4),
        ("low-3", "low"),
    ]
    handles = [client.submit("it.record", {"log": log, "tag": tag}, SubmitOptions(priority=p)) for tag, p in plan]

    workers(concurrency=1)
    tasks = finished(client, *handles)

    assert all(t.state == State.SUCCEEDED for t in tasks)
    assert read_log(log) == [
        "critical-1",
        "critical-2",
        "high-2",  # 9 beats 8
        "high-1",
        "normal-1",
        "normal-2",
        "normal-3",  # 4 is still the medium band, below 5
        "low-1",
        "low-3",
        "low-2",  # 1 is below low (2)
    ]
    bands = ["low", "medium", "high", "low", "high", "medium", "high", "high", "medium", "low"]
    assert [t.band for t in tasks] == bands


def test_failing_task_is_retried_with_backoff_until_it_succeeds(
    client: Conveyor, workers: SpawnWorker, tmp_path: Path
) -> None:
    counter = str(tmp_path / "flaky")
    handle = client.submit("it.flaky", {"counter": counter, "succeed_on": 3})
    workers()
    (task,) = finished(client, handle)

    assert task.state == State.SUCCEEDED
    assert (task.result, task.attempts) == (3, 3)
    assert len(attempt_times(counter)) == 3
    steps = transitions(task)
    assert task.history[0].state == State.PENDING  # the submit itself
    assert steps[1:] == ["claim", "retry", "due", "claim", "retry", "due", "claim", "complete"]
    assert task.finished_at is not None and task.started_at is not None


def test_task_out_of_retries_lands_in_the_dlq_with_its_error(
    client: Conveyor, workers: SpawnWorker, tmp_path: Path
) -> None:
    counter = str(tmp_path / "fails")
    handle = client.submit("it.always_fails", {"counter": counter})  # max_retries=2
    workers()
    (task,) = finished(client, handle)

    assert task.state == State.FAILED
    assert task.failure_reason == FailureReason.RETRIES_EXHAUSTED
    assert task.attempts == 3
    assert len(attempt_times(counter)) == 3
    assert task.error is not None
    assert (task.error.type, task.error.message, task.error.retryable) == ("ValueError", "boom", True)
    assert "always_fails" in (task.error.traceback or "")
    assert transitions(task).count("retry") == 2
    assert transitions(task)[-1] == "fail"
    assert [t.id for t in client.list_tasks(TaskFilter(state=State.FAILED)).items] == [handle.id]
    assert client.stats().dlq_size == 1


def test_permanent_error_fails_the_task_after_exactly_one_attempt(
    client: Conveyor, workers: SpawnWorker, tmp_path: Path
) -> None:
    counter = str(tmp_path / "bad")
    handle = client.submit("it.bad_input", {"counter": counter})
    workers()
    (task,) = finished(client, handle)

    assert task.state == State.FAILED
    assert task.failure_reason == FailureReason.PERMANENT_ERROR
    assert task.attempts == 1
    assert len(attempt_times(counter)) == 1
    assert task.error is not None
    assert (task.error.type, task.error.retryable) == ("Permanent", False)
    assert "retry" not in transitions(task)


def test_retry_raised_with_a_delay_is_honoured(client: Conveyor, workers: SpawnWorker, tmp_path: Path) -> None:
    counter = str(tmp_path / "later")
    handle = client.submit("it.retry_later", {"counter": counter, "delay": 0.8})
    workers()
    (task,) = finished(client, handle)

    assert task.state == State.SUCCEEDED
    assert (task.result, task.attempts) == (2, 2)
    first, second = attempt_times(counter)
    assert second - first >= 0.8 - 0.02  # the policy alone would wait at most 0.2 s
    (retry,) = [h for h in task.history if h.transition == "retry"]
    assert retry.state == State.RETRYING


def test_replayed_dead_letter_runs_again_and_succeeds(client: Conveyor, workers: SpawnWorker, tmp_path: Path) -> None:
    flag = tmp_path / "fixed"
    one = client.submit("it.needs_fix", {"flag": str(flag)})
    two = client.submit("it.needs_fix", {"flag": str(flag)})
    workers()
    first = finished(client, one, two)
    assert [(t.state, t.failure_reason) for t in first] == [(State.FAILED, FailureReason.PERMANENT_ERROR)] * 2

    flag.touch()  # the operator fixes the cause
    replayed = client.retry(one.id)
    assert replayed.state in (State.PENDING, State.RUNNING, State.SUCCEEDED)  # the worker may be quick
    (task,) = finished(client, one)
    assert (task.state, task.result, task.attempts) == (State.SUCCEEDED, "fixed", 1)  # attempts were reset
    assert client.get(two.id).state == State.FAILED  # only the one replayed

    assert client.dlq_replay(TaskFilter(name="it.needs_fix")) == 1
    (task_two,) = finished(client, two)
    assert task_two.state == State.SUCCEEDED
    steps = transitions(task)
    assert steps.index("fail") < steps.index("replay") < steps.index("complete")  # history is kept


@pytest.mark.parametrize(
    ("pool", "name"),
    [("async", "it.sleepy_async"), ("threads", "it.sleepy_sync"), ("processes", "it.sleepy_sync")],
)
def test_timed_out_task_is_retried_then_fails_with_reason_timeout(
    client: Conveyor, workers: SpawnWorker, tmp_path: Path, pool: str, name: str
) -> None:
    counter = str(tmp_path / "sleepy")
    handle = client.submit(name, {"counter": counter, "seconds": 2.0})  # timeout 0.3 s, max_retries 1
    workers(pool=pool, concurrency=2)
    (task,) = finished(client, handle)

    assert task.timeout == TIMEOUT
    assert task.state == State.FAILED
    assert task.failure_reason == FailureReason.TIMEOUT
    assert task.attempts == 2
    assert task.error is not None
    assert (task.error.type, task.error.retryable) == ("Timeout", True)
    assert len(attempt_times(counter)) == 2
    steps = transitions(task)
    assert steps.count("retry") == 1
    assert steps[-1] == "fail"
    assert task.finished_at is not None and task.started_at is not None
    assert (task.finished_at - task.started_at).total_seconds() < 1.5  # stopped, not waited out


@pytest.mark.parametrize("pool", ["async", "threads", "processes"])
def test_every_pool_runs_sync_and_async_task_functions(client: Conveyor, workers: SpawnWorker, pool: str) -> None:
    handles = [client.submit("it.where_sync", {"x": i}) for i in range(3)]
    handles += [client.submit("it.where_async", {"x": i}) for i in range(3, 6)]
    worker = workers(pool=pool, concurrency=2)
    tasks = finished(client, *handles)

    assert all(t.state == State.SUCCEEDED and t.attempts == 1 for t in tasks)
    assert [t.result["x"] for t in tasks] == list(range(6))
    assert [t.result["kind"] for t in tasks] == ["sync"] * 3 + ["async"] * 3
    pids = {t.result["pid"] for t in tasks}
    if pool == "processes":
        assert worker.pid not in pids
        assert os.getpid() not in pids
    else:
        assert pids == {worker.pid}
    if pool == "threads":
        assert all(t.result["thread"].startswith("conveyor-task") for t in tasks[:3])
