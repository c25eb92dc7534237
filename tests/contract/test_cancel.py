"""Cancelling: every non-terminal state can be cancelled, terminal ones refuse."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import pytest

from conveyor.backends.base import Backend, CancelParams, HeartbeatParams, Lease, ReleaseParams
from conveyor.errors import InvalidStateTransition, TaskNotFound
from conveyor.models import WorkerState
from conveyor.states import FailureReason, State

from .helpers import claim, claim_one, complete, enqueue, fail, new_task, retry, submit, worker_info

Make = Callable[[Backend], Awaitable[str]]


async def _pending(backend: Backend) -> str:
    return await submit(backend)


async def _scheduled(backend: Backend) -> str:
    return await submit(backend, delay=3600)


async def _waiting(backend: Backend) -> str:
    parent = await submit(backend, delay=3600)
    return await submit(backend, depends_on=[parent])


async def _retrying(backend: Backend) -> str:
    await submit(backend)
    claimed = await claim_one(backend)
    await backend.task_finish_many([retry(claimed, time.time() + 3600)])
    return claimed.id


@pytest.mark.parametrize(
    ("make", "state"),
    [
        (_pending, State.PENDING),
        (_scheduled, State.SCHEDULED),
        (_waiting, State.WAITING),
        (_retrying, State.RETRYING),
    ],
)
async def test_cancel_of_an_unstarted_task_makes_it_cancelled(backend: Backend, make: Make, state: State) -> None:
    task_id = await make(backend)
    assert (await backend.task_get(task_id)).state is state
    cancelled = await backend.task_cancel(CancelParams(task_id, reason="not needed"))
    assert (cancelled.id, cancelled.state) == (task_id, State.CANCELLED)
    assert cancelled.finished_at is not None
    assert (cancelled.history[-1].transition, cancelled.history[-1].reason) == ("cancel", "not needed")
    assert await backend.task_get(task_id) == cancelled
    assert task_id not in [c.id for c in await claim(backend, 10, now=time.time() + 7200)]


async def test_cancel_of_a_running_task_takes_its_lease_away(backend: Backend) -> None:
    await backend.worker_register(worker_info("w1"))
    await submit(backend)
    claimed = await claim_one(backend, worker_id="w1")
    cancelled = await backend.task_cancel(CancelParams(claimed.id))
    assert (cancelled.state, cancelled.lease_expires_at) == (State.CANCELLED, None)
    lease = Lease(claimed.id, claimed.lease_token)
    lost = await backend.worker_heartbeat(
        HeartbeatParams(worker_id="w1", state=WorkerState.BUSY, leases=[lease], lease_seconds=30)
    )
    assert lost == [claimed.id]
    assert await backend.task_finish_many([complete(claimed, "too late")]) == [False]
    assert await backend.task_release(ReleaseParams(worker_id="w1", leases=[lease])) == 0
    task = await backend.task_get(claimed.id)
    assert (task.state, task.result) == (State.CANCELLED, None)


async def _succeeded(backend: Backend) -> str:
    await submit(backend)
    claimed = await claim_one(backend)
    await backend.task_finish_many([complete(claimed)])
    return claimed.id


async def _failed(backend: Backend) -> str:
    await submit(backend)
    claimed = await claim_one(backend)
    await backend.task_finish_many([fail(claimed, FailureReason.PERMANENT_ERROR)])
    return claimed.id


async def _cancelled(backend: Backend) -> str:
    task_id = await submit(backend)
    await backend.task_cancel(CancelParams(task_id))
    return task_id


@pytest.mark.parametrize("make", [_succeeded, _failed, _cancelled])
async def test_cancel_of_a_terminal_task_raises_and_changes_nothing(backend: Backend, make: Make) -> None:
    task_id = await make(backend)
    before = await backend.task_get(task_id)
    with pytest.raises(InvalidStateTransition):
        await backend.task_cancel(CancelParams(task_id))
    assert await backend.task_get(task_id) == before


async def test_cancel_of_an_unknown_task_raises_task_not_found(backend: Backend) -> None:
    with pytest.raises(TaskNotFound):
        await backend.task_cancel(CancelParams("0190f0e0-0000-7000-8000-000000000000"))


async def test_cancelled_tasks_free_room_in_a_bounded_queue(backend: Backend) -> None:
    (first,) = await enqueue(backend, new_task(queue="q"), q=1)
    await backend.task_cancel(CancelParams(first.id))
    (second,) = await enqueue(backend, new_task(queue="q"), q=1)
    assert second.created
