"""Leases: reaping lapsed ones, heartbeats extending them, releasing them on shutdown."""

from __future__ import annotations

import time

import pytest

from conveyor.backends.base import Backend, HeartbeatParams, Lease, ReapParams, ReleaseParams
from conveyor.models import WorkerState
from conveyor.states import FailureReason, State

from .helpers import claim, claim_one, complete, enqueue, new_task, submit, worker_info


def heartbeat(worker_id: str, leases: list[Lease], now: float, lease_seconds: float = 30) -> HeartbeatParams:
    return HeartbeatParams(
        worker_id=worker_id, state=WorkerState.BUSY, leases=leases, lease_seconds=lease_seconds, now=now
    )


async def test_reap_returns_an_expired_lease_to_pending_and_keeps_the_attempt(backend: Backend) -> None:
    await submit(backend)
    now = time.time()
    claimed = await claim_one(backend, worker_id="gone", lease_seconds=10, now=now)
    assert await backend.task_reap_expired(ReapParams(now=now + 11)) == [claimed.id]
    task = await backend.task_get(claimed.id)
    assert (task.state, task.attempts, task.lease_expires_at, task.worker_id) == (State.PENDING, 1, None, None)
    assert (task.history[-1].transition, task.history[-1].state) == ("lease_expired", State.PENDING)
    assert task.history[-1].worker_id == "gone"  # who lost it stays on record
    again = await claim_one(backend, now=now + 12)
    assert again.attempts == 2


async def test_reap_leaves_live_leases_alone(backend: Backend) -> None:
    await submit(backend)
    now = time.time()
    claimed = await claim_one(backend, lease_seconds=10, now=now)
    assert await backend.task_reap_expired(ReapParams(now=now + 9)) == []
    assert (await backend.task_get(claimed.id)).state is State.RUNNING
    assert await backend.task_finish_many([complete(claimed)]) == [True]


async def test_reap_fails_a_task_with_no_attempts_left_as_retries_exhausted(backend: Backend) -> None:
    await submit(backend, max_retries=1)
    now = time.time()
    for attempt in (1, 2):
        claimed = await claim_one(backend, lease_seconds=1, now=now)
        assert claimed.attempts == attempt
        now += 5
        assert await backend.task_reap_expired(ReapParams(now=now)) == [claimed.id]
    task = await backend.task_get(claimed.id)
    assert (task.state, task.failure_reason, task.attempts) == (State.FAILED, FailureReason.RETRIES_EXHAUSTED, 2)
    assert task.finished_at is not None
    assert (task.history[-1].transition, task.history[-1].state) == ("lease_expired_final", State.FAILED)
    assert await claim(backend, 5, now=now) == []


async def test_reap_with_zero_retries_fails_after_the_first_lapse(backend: Backend) -> None:
    await submit(backend, max_retries=0)
    now = time.time()
    claimed = await claim_one(backend, lease_seconds=1, now=now)
    await backend.task_reap_expired(ReapParams(now=now + 2))
    assert (await backend.task_get(claimed.id)).state is State.FAILED


async def test_reap_takes_at_most_limit_tasks(backend: Backend) -> None:
    await enqueue(backend, *(new_task() for _ in range(5)))
    now = time.time()
    await claim(backend, 5, lease_seconds=1, now=now)
    first = await backend.task_reap_expired(ReapParams(now=now + 5, limit=3))
    rest = await backend.task_reap_expired(ReapParams(now=now + 5, limit=3))
    assert (len(first), len(rest)) == (3, 2)
    assert set(first).isdisjoint(rest)


async def test_heartbeat_extends_leases(backend: Backend) -> None:
    await backend.worker_register(worker_info("w1"))
    await submit(backend)
    now = time.time()
    claimed = await claim_one(backend, worker_id="w1", lease_seconds=10, now=now)
    lease = Lease(claimed.id, claimed.lease_token)
    assert await backend.worker_heartbeat(heartbeat("w1", [lease], now=now + 8, lease_seconds=10)) == []
    task = await backend.task_get(claimed.id)
    assert task.lease_expires_at is not None
    assert task.lease_expires_at.timestamp() == pytest.approx(now + 18, abs=1e-3)
    assert await backend.task_reap_expired(ReapParams(now=now + 15)) == []
    assert await backend.task_reap_expired(ReapParams(now=now + 19)) == [claimed.id]


async def test_heartbeat_reports_leases_the_worker_no_longer_holds(backend: Backend) -> None:
    await backend.worker_register(worker_info("w1"))
    await enqueue(backend, new_task(), new_task())
    now = time.time()
    kept = await claim_one(backend, worker_id="w1", lease_seconds=10, now=now)
    lost = await claim_one(backend, worker_id="w1", lease_seconds=1, now=now)
    await backend.task_reap_expired(ReapParams(now=now + 2))
    leases = [
        Lease(kept.id, kept.lease_token),
        Lease(lost.id, lost.lease_token),
        Lease("0190f0e0-0000-7000-8000-000000000000", "whatever"),
    ]
    gone = await backend.worker_heartbeat(heartbeat("w1", leases, now=now + 3))
    assert sorted(gone) == sorted([lost.id, "0190f0e0-0000-7000-8000-000000000000"])
    assert (await backend.task_get(lost.id)).state is State.PENDING


async def test_heartbeat_with_a_stale_token_does_not_extend_the_new_lease(backend: Backend) -> None:
    await backend.worker_register(worker_info("w1"))
    await submit(backend)
    now = time.time()
    old = await claim_one(backend, lease_seconds=1, now=now)
    await backend.task_reap_expired(ReapParams(now=now + 2))
    new = await claim_one(backend, lease_seconds=10, now=now + 2)
    assert await backend.worker_heartbeat(heartbeat("w1", [Lease(old.id, old.lease_token)], now=now + 5)) == [old.id]
    task = await backend.task_get(new.id)
    assert task.lease_expires_at is not None
    assert task.lease_expires_at.timestamp() == pytest.approx(now + 12, abs=1e-3)


async def test_release_returns_the_task_to_pending_and_counts_the_attempt(backend: Backend) -> None:
    await submit(backend)
    claimed = await claim_one(backend, worker_id="w1")
    released = await backend.task_release(
        ReleaseParams(worker_id="w1", leases=[Lease(claimed.id, claimed.lease_token)])
    )
    assert released == 1
    task = await backend.task_get(claimed.id)
    assert (task.state, task.attempts, task.lease_expires_at, task.worker_id) == (State.PENDING, 1, None, None)
    assert (task.history[-1].transition, task.history[-1].state) == ("release", State.PENDING)
    assert (await claim_one(backend)).attempts == 2


async def test_release_with_refund_does_not_count_the_attempt(backend: Backend) -> None:
    await submit(backend)
    claimed = await claim_one(backend, worker_id="w1")
    lease = Lease(claimed.id, claimed.lease_token, refund=True)
    assert await backend.task_release(ReleaseParams(worker_id="w1", leases=[lease])) == 1
    assert (await backend.task_get(claimed.id)).attempts == 0
    assert (await claim_one(backend)).attempts == 1


async def test_release_records_the_reason(backend: Backend) -> None:
    await submit(backend)
    claimed = await claim_one(backend, worker_id="w1")
    lease = Lease(claimed.id, claimed.lease_token)
    await backend.task_release(ReleaseParams(worker_id="w1", leases=[lease], reason="worker draining"))
    assert (await backend.task_get(claimed.id)).history[-1].reason == "worker draining"


async def test_release_with_a_stale_token_changes_nothing(backend: Backend) -> None:
    await enqueue(backend, new_task(), new_task())
    done = await claim_one(backend, worker_id="w1")
    held = await claim_one(backend, worker_id="w1")
    await backend.task_finish_many([complete(done)])
    before = await backend.task_get(done.id)
    leases = [
        Lease(done.id, done.lease_token),
        Lease(held.id, "forged-token"),
        Lease(held.id, held.lease_token),
    ]
    assert await backend.task_release(ReleaseParams(worker_id="w1", leases=leases)) == 1
    assert await backend.task_get(done.id) == before
    assert (await backend.task_get(held.id)).state is State.PENDING
