"""The worker's rules, checked fast: ``Worker`` runs in the test's event loop on ``memory://``.

The subprocess tests (``test_worker_sqlite_*``) prove the same rules on a real SQLite
file across processes; these run in milliseconds and pin down the details.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, FailureReason, InvalidStateTransition, QueueFull, State, Task
from conveyor.backends.base import ClaimParams, TaskFilter
from conveyor.config import QueueConfig
from conveyor.errors import TaskTimeout
from conveyor.models import TaskSpec
from conveyor.task import SubmitOptions, TaskHandle
from conveyor.worker import Worker, WorkerOptions
from conveyor.worker.pools import _Threads
from tests.integration.support import APP_PATH, fast_settings, transitions, wait_for
from tests.integration.tasks_app import TIMEOUT, attempt_times, build_app, marks_of, read_log


@asynccontextmanager
async def running(app: Conveyor, **options: Any) -> AsyncIterator[Worker]:
    """A worker running in this loop until the block ends (then a graceful stop)."""
    options.setdefault("app_path", APP_PATH)
    worker = Worker(app, WorkerOptions(**options))
    runner = asyncio.create_task(worker.run(), name=f"worker {worker.id}")
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(runner, 15)


async def submit(app: Conveyor, name: str, opts: SubmitOptions | None = None, **args: Any) -> TaskHandle:
    return await app.submit_async(name, args, opts)


async def finished(app: Conveyor, *handles: TaskHandle, timeout: float = 10.0) -> list[Task]:
    """Wait until every task is terminal; return them."""

    async def all_done() -> list[Task] | None:
        tasks = [await app.get_async(h.id) for h in handles]
        return tasks if all(t.terminal for t in tasks) else None

    return await wait_for(all_done, timeout, what="tasks to finish")


async def state_is(app: Conveyor, handle: TaskHandle, state: State, timeout: float = 10.0) -> Task:
    async def check() -> Task | None:
        task = await app.get_async(handle.id)
        return task if task.state == state else None

    return await wait_for(check, timeout, what=f"task {handle.id} to be {state}")


# --- order -----------------------------------------------------------------------------------


async def test_tasks_run_by_priority_then_first_in_first_out(mem_app: Conveyor, tmp_path: Path) -> None:
    log = str(tmp_path / "order.log")
    plan = [("a", 2), ("b", 5), ("c", 10), ("d", 2), ("e", 8), ("f", 5), ("g", 10), ("h", 0), ("i", 8), ("j", 5)]
    handles = [await submit(mem_app, "it.record", SubmitOptions(priority=p), log=log, tag=tag) for tag, p in plan]

    async with running(mem_app, concurrency=1):
        tasks = await finished(mem_app, *handles)

    expected = [tag for tag, _ in sorted(plan, key=lambda tp: -tp[1])]  # a stable sort keeps FIFO
    assert read_log(log) == expected
    assert {t.band for t in tasks if t.priority in (10, 8)} == {"high"}
    assert {t.band for t in tasks if t.priority in (0, 2)} == {"low"}
    assert all(t.state == State.SUCCEEDED and t.attempts == 1 for t in tasks)


# --- retries, the dead-letter queue, replay ------------------------------------------------------


async def test_failing_task_is_retried_until_it_succeeds(mem_app: Conveyor, tmp_path: Path) -> None:
    counter = str(tmp_path / "flaky")
    handle = await submit(mem_app, "it.flaky", counter=counter, succeed_on=3)
    async with running(mem_app):
        (task,) = await finished(mem_app, handle)

    assert task.state == State.SUCCEEDED
    assert task.result == 3
    assert task.attempts == 3
    assert len(attempt_times(counter)) == 3
    steps = transitions(task)
    assert steps.count("claim") == 3
    assert steps.count("retry") == 2
    assert steps.count("due") == 2
    assert steps[-1] == "complete"
    retries = [h for h in task.history if h.transition == "retry"]
    assert all(h.state == State.RETRYING for h in retries)


async def test_task_that_keeps_failing_is_dead_lettered_with_its_error(mem_app: Conveyor, tmp_path: Path) -> None:
    counter = str(tmp_path / "fails")
    handle = await submit(mem_app, "it.always_fails", counter=counter)  # max_retries=2
    async with running(mem_app):
        (task,) = await finished(mem_app, handle)

    assert task.state == State.FAILED
    assert task.failure_reason == FailureReason.RETRIES_EXHAUSTED
    assert task.attempts == 3
    assert len(attempt_times(counter)) == 3
    assert task.error is not None
    assert task.error.type == "ValueError"
    assert task.error.message == "boom"
    assert task.error.retryable is True
    assert "ValueError: boom" in (task.error.traceback or "")
    assert transitions(task).count("retry") == 2
    assert transitions(task)[-1] == "fail"
    dlq = await mem_app.list_tasks_async(TaskFilter(state=State.FAILED))
    assert [t.id for t in dlq.items] == [handle.id]


async def test_permanent_error_fails_after_one_attempt(mem_app: Conveyor, tmp_path: Path) -> None:
    counter = str(tmp_path / "bad")
    handle = await submit(mem_app, "it.bad_input", counter=counter)
    async with running(mem_app):
        (task,) = await finished(mem_app, handle)

    assert task.state == State.FAILED
    assert task.failure_reason == FailureReason.PERMANENT_ERROR
    assert task.attempts == 1
    assert len(attempt_times(counter)) == 1
    assert task.error is not None
    assert task.error.type == "Permanent"
    assert task.error.retryable is False
    assert "retry" not in transitions(task)


async def test_retry_with_a_delay_waits_that_long(mem_app: Conveyor, tmp_path: Path) -> None:
    counter = str(tmp_path / "later")
    handle = await submit(mem_app, "it.retry_later", counter=counter, delay=0.6)
    async with running(mem_app):
        (task,) = await finished(mem_app, handle)

    assert task.state == State.SUCCEEDED
    assert task.attempts == 2
    first, second = attempt_times(counter)
    assert second - first >= 0.6 - 0.02  # the policy alone (base 0.05 s, max 0.2 s) is shorter
    (retry,) = [h for h in task.history if h.transition == "retry"]
    (due,) = [h for h in task.history if h.transition == "due"]
    assert (due.at - retry.at).total_seconds() >= 0.6 - 0.02


async def test_replayed_dead_letter_runs_again_and_succeeds(mem_app: Conveyor, tmp_path: Path) -> None:
    flag = tmp_path / "fixed"
    handle = await submit(mem_app, "it.needs_fix", flag=str(flag))
    async with running(mem_app):
        (task,) = await finished(mem_app, handle)
        assert task.state == State.FAILED
        assert task.failure_reason == FailureReason.PERMANENT_ERROR

        flag.touch()  # the operator fixes the cause, then replays
        replayed = await mem_app.retry_async(handle.id)
        assert replayed.state in (State.PENDING, State.RUNNING, State.SUCCEEDED)
        task = await state_is(mem_app, handle, State.SUCCEEDED)

    assert task.result == "fixed"
    assert task.attempts == 1  # reset by the replay
    assert task.failure_reason is None
    steps = transitions(task)
    assert steps.index("fail") < steps.index("replay") < len(steps) - 1
    assert steps[-1] == "complete"


async def test_dlq_replay_by_filter_replays_only_matching_dead_letters(mem_app: Conveyor, tmp_path: Path) -> None:
    flag = tmp_path / "fixed"
    counter = str(tmp_path / "bad")
    fixable = [await submit(mem_app, "it.needs_fix", flag=str(flag)) for _ in range(3)]
    other = await submit(mem_app, "it.bad_input", counter=counter)
    async with running(mem_app):
        await finished(mem_app, *fixable, other)
        flag.touch()
        assert await mem_app.dlq_replay_async(TaskFilter(name="it.needs_fix")) == 3
        tasks = await finished(mem_app, *fixable)

    assert all(t.state == State.SUCCEEDED and t.attempts == 1 for t in tasks)
    assert (await mem_app.get_async(other.id)).state == State.FAILED
    assert len(attempt_times(counter)) == 1


async def test_replay_refuses_a_task_that_is_not_failed(mem_app: Conveyor, tmp_path: Path) -> None:
    handle = await submit(mem_app, "it.record", log=str(tmp_path / "log"), tag="x")
    with pytest.raises(InvalidStateTransition):
        await mem_app.retry_async(handle.id)


# --- timeouts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pool", "name"),
    [("async", "it.sleepy_async"), ("threads", "it.sleepy_sync"), ("processes", "it.sleepy_sync")],
)
async def test_task_past_its_timeout_is_stopped_retried_then_failed(
    mem_app: Conveyor, tmp_path: Path, pool: str, name: str
) -> None:
    counter = str(tmp_path / "sleepy")
    handle = await submit(mem_app, name, counter=counter, seconds=1.5)  # timeout 0.3 s, max_retries 1
    async with running(mem_app, pool=pool, concurrency=2):
        (task,) = await finished(mem_app, handle)

    assert task.state == State.FAILED
    assert task.failure_reason == FailureReason.TIMEOUT
    assert task.attempts == 2
    assert task.error is not None
    assert task.error.type == "Timeout"
    assert task.error.retryable is True
    assert transitions(task).count("retry") == 1
    assert len(attempt_times(counter)) == 2
    assert task.timeout == TIMEOUT
    assert task.finished_at is not None and task.started_at is not None
    assert (task.finished_at - task.started_at).total_seconds() < 1.0  # stopped, not waited out


@pytest.mark.parametrize(
    ("pool", "name"),
    [("async", "it.sleepy_async"), ("threads", "it.sleepy_sync"), ("processes", "it.sleepy_sync")],
)
async def test_a_tasks_own_timeout_error_is_an_ordinary_error_not_its_time_limit(
    mem_app: Conveyor, tmp_path: Path, pool: str, name: str
) -> None:
    counter = str(tmp_path / "sleepy")
    handle = await submit(mem_app, name, counter=counter, seconds=0, own_timeout=True)  # timeout 0.3 s, 1 retry
    async with running(mem_app, pool=pool, concurrency=2):
        (task,) = await finished(mem_app, handle)
    assert (task.state, task.failure_reason, task.attempts) == (State.FAILED, FailureReason.RETRIES_EXHAUSTED, 2)
    assert task.error is not None
    assert (task.error.type, task.error.message) == ("TimeoutError", "the socket timed out")


ENDED = {State.FAILED}
AGAIN = {State.RETRYING, State.PENDING, State.RUNNING, State.FAILED}  # retried once, at its own pace
MISBEHAVIOUR = {  # what task code does -> (states it may be in once recorded, error type)
    "exit": (ENDED, "SystemExit"),  # not Exceptions: permanent under the default retry_on
    "interrupt": (ENDED, "KeyboardInterrupt"),
    "cancelled": (ENDED, "CancelledError"),
    "base": (ENDED, "_Odd"),
    "unprintable": (AGAIN, "_Unprintable"),
    "bad_retry": (ENDED, "InvalidInput"),  # Retry(delay="soon")
    "deep": (ENDED, "InvalidInput"),  # a result nested 2,000 deep
    "far_retry": ({State.RETRYING}, "Retry"),  # Retry(delay=1e12)
    "lambda": (ENDED, "InvalidInput"),  # a result that neither pickles nor is JSON
    "locked": (AGAIN, "_Locked"),  # an exception a child cannot send as raised
    "two_args": (AGAIN, "_TwoArgs"),  # ... or the worker cannot rebuild
}


@pytest.mark.parametrize(
    ("pool", "name"), [("async", "it.misbehave_async"), ("threads", "it.misbehave"), ("processes", "it.misbehave")]
)
async def test_task_code_that_misbehaves_fails_its_attempt_alike_in_every_pool_and_the_worker_carries_on(
    mem_app: Conveyor, pool: str, name: str
) -> None:
    handles = {kind: await submit(mem_app, name, kind=kind) for kind in MISBEHAVIOUR}
    async with running(mem_app, pool=pool, concurrency=2):

        async def recorded() -> bool:
            tasks = [await mem_app.get_async(h.id) for h in handles.values()]
            return all(t.error is not None for t in tasks)

        await wait_for(recorded, what="every misbehaving attempt to be recorded", timeout=10)
        ok = await submit(mem_app, "it.where_async", x=1)  # the worker is still serving
        await finished(mem_app, ok)
    for kind, handle in handles.items():
        task = await mem_app.get_async(handle.id)
        states, error_type = MISBEHAVIOUR[kind]
        assert task.error is not None and task.error.message, kind
        assert (task.state in states, task.error.type) == (True, error_type), (kind, task.state, task.error)
    far = await mem_app.get_async(handles["far_retry"].id)
    assert far.run_at.timestamp() <= time.time() + 30 * 86400 + 60  # capped: still a date every reader can write


async def test_a_child_that_dies_is_reported_as_such_and_replaced(mem_app: Conveyor) -> None:
    dying = await submit(mem_app, "it.misbehave", kind="die")
    async with running(mem_app, pool="processes", concurrency=1):

        async def recorded() -> bool:
            return (await mem_app.get_async(dying.id)).error is not None

        await wait_for(recorded, what="the attempt to be recorded")
        ok = await submit(mem_app, "it.where_sync", x=1)  # a fresh child runs the next task
        await finished(mem_app, ok)
    task = await mem_app.get_async(dying.id)
    assert task.error is not None
    assert (task.error.type, task.error.message) == (
        "ChildDied",
        "the child process running this task died (exit code 1)",
    )


async def test_thread_pool_replaces_an_abandoned_thread_and_never_reruns_an_attempt(
    memory_url: str, tmp_path: Path
) -> None:
    # One thread: the first attempt's thread is abandoned still sleeping; the retry must
    # get a fresh thread at once, and nothing may run again once the sleeper wakes.
    app = build_app(memory_url, settings=fast_settings(memory_url))
    counter = str(tmp_path / "sleepy")
    handle = await submit(app, "it.sleepy_sync", counter=counter, seconds=1.0)
    async with running(app, pool="threads", concurrency=1):
        (task,) = await finished(app, handle)
        assert (task.failure_reason, task.attempts) == (FailureReason.TIMEOUT, 2)
        assert len(attempt_times(counter)) == 2  # the retry ran, on a fresh thread
        await asyncio.sleep(1.2)  # both abandoned sleepers wake meanwhile
    assert len(attempt_times(counter)) == 2


async def test_sync_call_that_times_out_while_waiting_for_a_thread_never_runs() -> None:
    threads = _Threads(1, "it")
    gate = threading.Event()
    ran: list[str] = []
    busy = asyncio.create_task(threads.run(gate.wait, "busy", None))
    await asyncio.sleep(0.05)
    with pytest.raises(TaskTimeout):
        await threads.run(lambda: ran.append("queued"), "queued", 0.1)
    gate.set()
    await busy
    assert await threads.run(lambda: "next", "next", 1.0) == "next"
    assert ran == []
    threads.close()


# --- graceful stop and recovery ---------------------------------------------------------------------


async def test_stop_finishes_running_tasks_and_releases_unstarted_ones(memory_url: str, marks: Path) -> None:
    app = build_app(memory_url, settings=fast_settings(memory_url, prefetch=2))
    handles = [await submit(app, "it.slow", marks=str(marks), key=f"t{i}", seconds=0.5) for i in range(4)]
    async with running(app, concurrency=2) as worker:
        await wait_for(lambda: len(marks_of(marks, "start")) == 2, what="two tasks to start")
        assert len(worker._inflight) == 4  # two running, two claimed and waiting for a slot
    # the block's exit was a graceful stop

    tasks = [await app.get_async(h.id) for h in handles]
    started = {key for key, _ in marks_of(marks, "start")}
    done = {key for key, _ in marks_of(marks, "done")}
    assert started == done
    for t in tasks:
        if t.args["key"] in started:
            assert (t.state, t.attempts) == (State.SUCCEEDED, 1)
        else:
            assert (t.state, t.attempts) == (State.PENDING, 0)
            assert transitions(t)[-2:] == ["claim", "release"]


async def test_a_grace_of_zero_releases_running_tasks_at_once(memory_url: str, marks: Path) -> None:
    app = build_app(memory_url, settings=fast_settings(memory_url, shutdown_grace=0))
    handle = await submit(app, "it.slow", marks=str(marks), key="t", seconds=30)
    started = time.monotonic()
    async with running(app, concurrency=1):
        await wait_for(lambda: len(marks_of(marks, "start")) == 1, what="the task to start")
    assert time.monotonic() - started < 10  # not the task's 30 s
    task = await app.get_async(handle.id)
    assert task.state == State.PENDING and transitions(task)[-1] == "release"
    assert [key for key, _ in marks_of(marks, "stopped")] == ["t"]


async def test_auto_prefetch_claims_ahead_only_while_tasks_are_short(memory_url: str, marks: Path) -> None:
    """prefetch="auto" (the default): a worker whose tasks are short claims ahead about
    5 ms of work, at most 4 times its concurrency; one slow task turns that off, and
    slow tasks then are never held waiting for a slot while another worker could run
    them."""
    app = build_app(memory_url, settings=fast_settings(memory_url))
    async with running(app, concurrency=2) as worker:
        assert worker.capacity() == 2  # nothing measured yet: no claiming ahead

        async def quick_tasks_ran() -> bool:
            await finished(app, *[await submit(app, "it.where_async", x=i) for i in range(10)])
            return worker.capacity() > 2

        await wait_for(quick_tasks_ran, what="short tasks to turn prefetch on")
        assert worker.capacity() <= 2 + 4 * 2
        slow = [await submit(app, "it.slow", marks=str(marks), key=f"s{i}", seconds=0.05) for i in range(14)]
        await wait_for(lambda: worker.capacity() == 2, what="a slow task to turn prefetch off")
        assert len(marks_of(marks, "done")) >= 1
        # the 10 it could hold when the slow tasks came are done: the rest it claims
        # only for free slots
        await wait_for(lambda: len(marks_of(marks, "done")) >= 10, what="the slow tasks claimed ahead")
        assert len(worker._inflight) <= 2
        await finished(app, *slow)


async def test_a_fixed_prefetch_ignores_task_length(memory_url: str) -> None:
    app = build_app(memory_url, settings=fast_settings(memory_url, prefetch=3))
    async with running(app, concurrency=2) as worker:
        assert worker.capacity() == 5
        await finished(app, *[await submit(app, "it.where_async", x=i) for i in range(10)])
        assert worker.capacity() == 5


async def test_tasks_of_a_dead_worker_are_recovered_when_their_lease_lapses(mem_app: Conveyor, marks: Path) -> None:
    handles = [await submit(mem_app, "it.once", marks=str(marks), key=f"t{i}") for i in range(3)]
    backend = await mem_app.backend()
    claim = await backend.task_claim(ClaimParams("dead-worker", 3, lease_seconds=0.2))
    assert len(claim.tasks) == 3  # claimed, then never heard from again

    async with running(mem_app):
        tasks = await finished(mem_app, *handles)

    for t in tasks:
        assert t.state == State.SUCCEEDED
        assert t.attempts == 2
        assert "lease_expired" in transitions(t)
    assert sorted(k for k, _ in marks_of(marks, "ran")) == ["t0", "t1", "t2"]


async def test_heartbeats_keep_a_long_task_leased_past_its_first_lease(memory_url: str, marks: Path) -> None:
    app = build_app(memory_url, settings=fast_settings(memory_url, lease_seconds=0.4))
    handle = await submit(app, "it.slow", marks=str(marks), key="long", seconds=1.5)
    async with running(app):  # its own reaper runs every 0.1 s
        (task,) = await finished(app, handle)
    assert (task.state, task.attempts) == (State.SUCCEEDED, 1)
    assert "lease_expired" not in transitions(task)
    assert len(marks_of(marks, "start")) == 1


async def test_worker_holds_no_more_attempts_than_its_concurrency(mem_app: Conveyor, marks: Path) -> None:
    handles = [await submit(mem_app, "it.slow", marks=str(marks), key=f"t{i}", seconds=0.1) for i in range(8)]
    async with running(mem_app, concurrency=2):
        tasks = await finished(mem_app, *handles)

    # each attempt spans its claim to its finish (the worker's clock): at most two overlap
    spans = [(t.history[1].at, t.history[-1].at) for t in tasks]
    assert all(transitions(t)[1:] == ["claim", "complete"] for t in tasks)
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    overlap = most = 0
    for _, step in events:
        overlap += step
        most = max(most, overlap)
    assert most == 2


async def test_worker_only_takes_tasks_whose_required_tags_it_has(mem_app: Conveyor, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    gpu = await submit(mem_app, "it.record", SubmitOptions(requires=["gpu"]), log=log, tag="gpu")
    plain = await submit(mem_app, "it.record", log=log, tag="plain")
    async with running(mem_app, tags=["cpu"]):
        await state_is(mem_app, plain, State.SUCCEEDED)
        await asyncio.sleep(0.2)
        assert (await mem_app.get_async(gpu.id)).state == State.PENDING
    async with running(mem_app, tags=["gpu", "cpu"]):
        await state_is(mem_app, gpu, State.SUCCEEDED)
    assert read_log(log) == ["plain", "gpu"]


# --- submit rules ----------------------------------------------------------------------------------


async def test_double_submit_with_an_idempotency_key_returns_the_same_task(mem_app: Conveyor, tmp_path: Path) -> None:
    opts = SubmitOptions(idempotency_key="order-42")
    first = await submit(mem_app, "it.record", opts, log=str(tmp_path / "log"), tag="a")
    second = await submit(mem_app, "it.record", opts, log=str(tmp_path / "log"), tag="b")
    elsewhere = await submit(
        mem_app, "it.record", SubmitOptions(idempotency_key="order-42", queue="other"), log="x", tag="c"
    )

    assert second.id == first.id
    assert (first.created, second.created) == (True, False)
    assert elsewhere.id != first.id  # keys are unique per queue
    page = await mem_app.list_tasks_async(TaskFilter(queue="default"))
    assert [t.id for t in page.items] == [first.id]
    assert page.items[0].args["tag"] == "a"


async def test_delayed_task_does_not_start_before_its_time(mem_app: Conveyor, tmp_path: Path) -> None:
    async with running(mem_app):
        submitted = time.time()
        handle = await submit(mem_app, "it.record", SubmitOptions(delay=0.5), log=str(tmp_path / "log"), tag="x")
        assert (await mem_app.get_async(handle.id)).state == State.SCHEDULED
        (task,) = await finished(mem_app, handle)

    assert task.state == State.SUCCEEDED
    assert task.started_at is not None
    assert task.started_at >= task.run_at
    assert abs(task.run_at.timestamp() - (submitted + 0.5)) < 0.1


async def test_full_queue_refuses_submits_and_stores_nothing(memory_url: str, tmp_path: Path) -> None:
    settings = fast_settings(memory_url).model_copy(update={"queues": {"small": QueueConfig(max_length=2)}})
    app = build_app(memory_url, settings=settings)
    small = SubmitOptions(queue="small")
    log = str(tmp_path / "log")
    first = await submit(app, "it.record", small, log=log, tag="1")
    await submit(app, "it.record", small, log=log, tag="2")
    with pytest.raises(QueueFull):
        await submit(app, "it.record", small, log=log, tag="3")
    await submit(app, "it.record", log=log, tag="other-queue")  # other queues are not bounded

    await app.cancel_async(first.id)  # a finished task frees its place
    batch = [TaskSpec(name="it.record", args={"log": log, "tag": t}, queue="small") for t in ("4", "5")]
    with pytest.raises(QueueFull):
        await app.enqueue_many_async(batch)  # all or nothing
    page = await app.list_tasks_async(TaskFilter(queue="small"))
    assert sorted(t.args["tag"] for t in page.items) == ["1", "2"]
    await submit(app, "it.record", small, log=log, tag="4")


# --- cancellation and fencing ------------------------------------------------------------------------


async def test_cancelled_pending_task_never_runs(mem_app: Conveyor, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    doomed = await submit(mem_app, "it.record", log=log, tag="doomed")
    cancelled = await mem_app.cancel_async(doomed.id)
    assert cancelled.state == State.CANCELLED
    later = await submit(mem_app, "it.record", log=log, tag="later")
    async with running(mem_app, concurrency=1):
        await state_is(mem_app, later, State.SUCCEEDED)

    task = await mem_app.get_async(doomed.id)
    assert (task.state, task.attempts) == (State.CANCELLED, 0)
    assert read_log(log) == ["later"]
    with pytest.raises(InvalidStateTransition):
        await mem_app.cancel_async(doomed.id)


async def test_cancelled_running_task_is_stopped_by_the_worker(mem_app: Conveyor, marks: Path) -> None:
    handle = await submit(mem_app, "it.slow", marks=str(marks), key="long", seconds=30)
    async with running(mem_app) as worker:
        await wait_for(lambda: marks_of(marks, "start"), what="the task to start")
        await mem_app.cancel_async(handle.id)
        await wait_for(lambda: marks_of(marks, "stopped"), what="the worker to stop the task")
        await wait_for(lambda: not worker._inflight, what="the attempt to leave the worker")

    task = await mem_app.get_async(handle.id)
    assert task.state == State.CANCELLED
    assert task.result is None
    assert transitions(task)[-1] == "cancel"
    assert marks_of(marks, "done") == []


async def test_late_completion_of_a_cancelled_task_is_rejected(mem_app: Conveyor, marks: Path) -> None:
    handle = await submit(mem_app, "it.stubborn", marks=str(marks), key="stubborn", seconds=30)
    async with running(mem_app) as worker:
        await wait_for(lambda: marks_of(marks, "start"), what="the task to start")
        await mem_app.cancel_async(handle.id)
        assert worker._completer is not None
        completer = worker._completer
        await wait_for(lambda: completer.stale == 1, what="the late outcome to be refused")

    task = await mem_app.get_async(handle.id)
    assert task.state == State.CANCELLED
    assert task.result is None
    assert transitions(task)[-1] == "cancel"


async def test_two_workers_never_run_the_same_task_twice(mem_app: Conveyor, marks: Path) -> None:
    handles = [await submit(mem_app, "it.once", marks=str(marks), key=f"t{i}") for i in range(200)]
    async with running(mem_app, concurrency=4) as w1, running(mem_app, concurrency=4) as w2:
        tasks = await finished(mem_app, *handles, timeout=20)

    ran = [key for key, _ in marks_of(marks, "ran")]
    assert sorted(ran) == sorted(f"t{i}" for i in range(200))
    assert all(t.state == State.SUCCEEDED and t.attempts == 1 for t in tasks)
    claimers = {h.worker_id for t in tasks for h in t.history if h.transition == "claim"}
    assert claimers <= {w1.id, w2.id}


# --- pools --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["async", "threads", "processes"])
async def test_every_pool_runs_sync_and_async_functions(mem_app: Conveyor, pool: str) -> None:
    sync = await submit(mem_app, "it.where_sync", x=1)
    coro = await submit(mem_app, "it.where_async", x=2)
    async with running(mem_app, pool=pool, concurrency=2):
        tasks = await finished(mem_app, sync, coro)

    assert [t.state for t in tasks] == [State.SUCCEEDED, State.SUCCEEDED]
    by_kind = {t.result["kind"]: t.result for t in tasks}
    assert (by_kind["sync"]["x"], by_kind["async"]["x"]) == (1, 2)
    here = os.getpid()
    if pool == "processes":
        assert by_kind["sync"]["pid"] != here
        assert by_kind["async"]["pid"] != here
    else:
        assert by_kind["sync"]["pid"] == here == by_kind["async"]["pid"]
        assert by_kind["async"]["thread"] == threading.current_thread().name  # the worker's loop
        assert by_kind["sync"]["thread"] != threading.current_thread().name
    if pool == "threads":
        assert by_kind["sync"]["thread"].startswith("conveyor-task")


async def test_stop_returns_only_after_every_outcome_is_written(
    mem_app: Conveyor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The completer is in the middle of a slow write when the stop begins: ``run()``
    # must not return (and the backend must not be closed) before that write lands.
    backend = await mem_app.backend()
    real_finish = backend.task_finish_many
    writing = asyncio.Event()

    async def slow_finish(outcomes: Any) -> list[bool]:
        writing.set()
        await asyncio.sleep(0.3)
        return await real_finish(outcomes)

    monkeypatch.setattr(backend, "task_finish_many", slow_finish)
    handle = await submit(mem_app, "it.record", log=str(tmp_path / "log"), tag="x")
    async with running(mem_app):
        await asyncio.wait_for(writing.wait(), 10)
    assert (await mem_app.get_async(handle.id)).state == State.SUCCEEDED
