"""Recording the end of an attempt: complete, retry, fail, and fencing by lease token."""

from __future__ import annotations

import time

import pytest

from conveyor.backends.base import Backend, ClaimParams, Outcome, ReapParams
from conveyor.states import FailureReason, State

from .helpers import claim_one, complete, enqueue, error, fail, new_task, retry, submit


async def test_complete_stores_result_and_succeeds(backend: Backend) -> None:
    await submit(backend)
    claimed = await claim_one(backend, worker_id="w9")
    finished_at = time.time()
    ok = await backend.task_finish_many(
        [complete(claimed, result={"sent": True, "n": [1, 2]}, worker_id="w9", finished_at=finished_at)]
    )
    assert ok == [True]
    task = await backend.task_get(claimed.id)
    assert (task.state, task.result, task.failure_reason) == (State.SUCCEEDED, {"sent": True, "n": [1, 2]}, None)
    assert task.finished_at is not None and task.finished_at.timestamp() == pytest.approx(finished_at, abs=1e-3)
    assert (task.lease_expires_at, task.worker_id) == (None, None)  # nobody holds it any more
    assert task.attempts == 1
    assert (task.history[-1].transition, task.history[-1].state) == ("complete", State.SUCCEEDED)
    assert task.history[-1].worker_id == "w9"


async def test_success_after_a_retry_clears_the_error(backend: Backend) -> None:
    await submit(backend)
    first = await claim_one(backend)
    await backend.task_finish_many([retry(first, time.time())])
    second = await claim_one(backend, now=time.time() + 1)
    await backend.task_finish_many([complete(second, "ok")])
    task = await backend.task_get(first.id)
    assert (task.state, task.result, task.error, task.attempts) == (State.SUCCEEDED, "ok", None, 2)


@pytest.mark.parametrize("result", [None, 0, "text", [1, "a"], {"deep": {"er": [None]}}])
async def test_any_json_result_round_trips(backend: Backend, result: object) -> None:
    await submit(backend)
    claimed = await claim_one(backend)
    await backend.task_finish_many([complete(claimed, result=result)])
    assert (await backend.task_get(claimed.id)).result == result


async def test_retry_moves_to_retrying_with_error_and_run_at(backend: Backend) -> None:
    await submit(backend)
    claimed = await claim_one(backend)
    run_at = time.time() + 120
    err = error("flaky")
    assert await backend.task_finish_many([retry(claimed, run_at, error=err)]) == [True]
    task = await backend.task_get(claimed.id)
    assert (task.state, task.error, task.failure_reason, task.attempts) == (State.RETRYING, err, None, 1)
    assert task.run_at.timestamp() == pytest.approx(run_at, abs=1e-3)
    assert (task.finished_at, task.lease_expires_at, task.worker_id) == (None, None, None)
    assert (task.history[-1].transition, task.history[-1].state) == ("retry", State.RETRYING)
    assert task.history[-1].reason == "ValueError: flaky"


async def test_retrying_task_is_claimable_only_when_its_backoff_is_over(backend: Backend) -> None:
    await submit(backend)
    claimed = await claim_one(backend)
    run_at = time.time() + 120
    await backend.task_finish_many([retry(claimed, run_at)])
    early = await backend.task_claim(ClaimParams(worker_id="w1", limit=5, lease_seconds=30))
    assert early.tasks == [] and early.next_due == pytest.approx(run_at, abs=1e-3)
    again = await claim_one(backend, now=run_at + 0.5)
    assert (again.id, again.attempts) == (claimed.id, 2)
    assert again.lease_token != claimed.lease_token
    transitions = [h.transition for h in (await backend.task_get(claimed.id)).history]
    assert transitions[-3:] == ["retry", "due", "claim"]


@pytest.mark.parametrize("reason", list(FailureReason))
async def test_fail_moves_to_failed_with_reason_error_and_finished_at(backend: Backend, reason: FailureReason) -> None:
    await submit(backend)
    claimed = await claim_one(backend)
    err = error("bad input", retryable=False)
    assert await backend.task_finish_many([fail(claimed, reason, error=err)]) == [True]
    task = await backend.task_get(claimed.id)
    assert (task.state, task.failure_reason, task.error) == (State.FAILED, reason, err)
    assert task.finished_at is not None
    assert (task.lease_expires_at, task.worker_id) == (None, None)
    assert (task.history[-1].transition, task.history[-1].state) == ("fail", State.FAILED)


async def test_finish_many_reports_each_outcome_in_order(backend: Backend) -> None:
    await enqueue(backend, new_task(), new_task(), new_task())
    a, b, c = await claim_one(backend), await claim_one(backend), await claim_one(backend)
    stale = Outcome(task_id=b.id, lease_token="not-the-token", kind="complete")
    ok = await backend.task_finish_many(
        [complete(a, 1), stale, fail(c, FailureReason.PERMANENT_ERROR), retry(b, time.time() + 60)]
    )
    assert ok == [True, False, True, True]
    states = [(await backend.task_get(t.id)).state for t in (a, b, c)]
    assert states == [State.SUCCEEDED, State.RETRYING, State.FAILED]


async def test_finish_many_of_nothing_returns_nothing(backend: Backend) -> None:
    assert await backend.task_finish_many([]) == []


async def test_outcome_for_an_unknown_task_returns_false(backend: Backend) -> None:
    outcome = Outcome(task_id="0190f0e0-0000-7000-8000-000000000000", lease_token="t", kind="complete")
    assert await backend.task_finish_many([outcome]) == [False]


async def test_second_outcome_for_the_same_claim_is_rejected(backend: Backend) -> None:
    await submit(backend)
    claimed = await claim_one(backend)
    assert await backend.task_finish_many([complete(claimed, "first")]) == [True]
    before = await backend.task_get(claimed.id)
    assert await backend.task_finish_many([fail(claimed, FailureReason.PERMANENT_ERROR)]) == [False]
    assert await backend.task_finish_many([complete(claimed, "second")]) == [False]
    assert await backend.task_get(claimed.id) == before


async def test_outcome_with_a_stale_token_after_reap_and_reclaim_changes_nothing(backend: Backend) -> None:
    await submit(backend)
    now = time.time()
    lost = await claim_one(backend, worker_id="slow", lease_seconds=5, now=now)
    assert await backend.task_reap_expired(ReapParams(now=now + 10)) == [lost.id]
    current = await claim_one(backend, worker_id="fast", now=now + 11)
    before = await backend.task_get(lost.id)
    for outcome in (
        complete(lost, "stale"),
        retry(lost, now + 100),
        fail(lost, FailureReason.PERMANENT_ERROR),
    ):
        assert await backend.task_finish_many([outcome]) == [False]
    assert await backend.task_get(lost.id) == before
    assert await backend.task_finish_many([complete(current, "fresh")]) == [True]
    assert (await backend.task_get(lost.id)).result == "fresh"


async def test_outcome_with_a_stale_token_after_reap_changes_nothing(backend: Backend) -> None:
    await submit(backend)
    now = time.time()
    lost = await claim_one(backend, lease_seconds=5, now=now)
    await backend.task_reap_expired(ReapParams(now=now + 10))
    before = await backend.task_get(lost.id)
    assert await backend.task_finish_many([complete(lost, "late")]) == [False]
    assert await backend.task_get(lost.id) == before
