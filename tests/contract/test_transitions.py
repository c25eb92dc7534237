"""Every transition of ``conveyor.states.TRANSITIONS`` through the public operations,
and every operation refusing the states its transition does not allow."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import pytest

from conveyor import states
from conveyor.backends.base import Backend, CancelParams, Lease, ReapParams, ReleaseParams, TaskFilter
from conveyor.errors import InvalidStateTransition
from conveyor.states import TRANSITIONS, FailureReason, State

from .helpers import claim, claim_one, complete, enqueue, fail, new_task, retry, submit, task_in_state

Drive = Callable[[Backend], Awaitable[str]]


async def _deps_succeeded(backend: Backend) -> str:
    parent = await submit(backend, queue="parent")
    child = await submit(backend, depends_on=[parent])
    await backend.task_finish_many([complete(await claim_one(backend, queues=("parent",)))])
    return child


async def _dependency_failed(backend: Backend) -> str:
    parent = await submit(backend, queue="parent")
    child = await submit(backend, depends_on=[parent])
    claimed = await claim_one(backend, queues=("parent",))
    await backend.task_finish_many([fail(claimed, FailureReason.PERMANENT_ERROR)])
    return child


async def _due(backend: Backend) -> str:
    t = new_task(delay=60)
    await enqueue(backend, t)
    await claim(backend, 0, now=t.run_at + 1)
    return t.id


async def _claim(backend: Backend) -> str:
    await submit(backend)
    return (await claim_one(backend)).id


async def _complete(backend: Backend) -> str:
    await submit(backend)
    claimed = await claim_one(backend)
    await backend.task_finish_many([complete(claimed)])
    return claimed.id


async def _retry(backend: Backend) -> str:
    await submit(backend)
    claimed = await claim_one(backend)
    await backend.task_finish_many([retry(claimed, time.time() + 60)])
    return claimed.id


async def _fail(backend: Backend) -> str:
    await submit(backend)
    claimed = await claim_one(backend)
    await backend.task_finish_many([fail(claimed, FailureReason.PERMANENT_ERROR)])
    return claimed.id


async def _lease_expired(backend: Backend, max_retries: int = 3) -> str:
    await submit(backend, max_retries=max_retries)
    now = time.time()
    claimed = await claim_one(backend, lease_seconds=1, now=now)
    await backend.task_reap_expired(ReapParams(now=now + 2))
    return claimed.id


async def _lease_expired_final(backend: Backend) -> str:
    return await _lease_expired(backend, max_retries=0)


async def _release(backend: Backend) -> str:
    await submit(backend)
    claimed = await claim_one(backend)
    await backend.task_release(ReleaseParams(worker_id="w1", leases=[Lease(claimed.id, claimed.lease_token)]))
    return claimed.id


async def _cancel(backend: Backend) -> str:
    task_id = await submit(backend)
    await backend.task_cancel(CancelParams(task_id))
    return task_id


async def _replay(backend: Backend) -> str:
    task_id = await _fail(backend)
    await backend.task_replay(TaskFilter(ids=[task_id]))
    return task_id


DRIVERS: dict[str, Drive] = {
    "deps_succeeded": _deps_succeeded,
    "dependency_failed": _dependency_failed,
    "due": _due,
    "claim": _claim,
    "complete": _complete,
    "retry": _retry,
    "fail": _fail,
    "lease_expired": _lease_expired,
    "lease_expired_final": _lease_expired_final,
    "release": _release,
    "cancel": _cancel,
    "replay": _replay,
}


def test_every_transition_in_the_table_has_a_driver() -> None:
    assert set(DRIVERS) == set(TRANSITIONS)


@pytest.mark.parametrize("transition", sorted(TRANSITIONS))
async def test_each_transition_is_taken_and_recorded(backend: Backend, transition: str) -> None:
    task_id = await DRIVERS[transition](backend)
    task = await backend.task_get(task_id)
    previous, last = task.history[-2], task.history[-1]
    assert (last.transition, last.state, task.state) == (transition, states.target(transition), task.state)
    assert previous.state in states.sources(transition)
    assert task.updated_at == last.at


@pytest.mark.parametrize("state", list(State))
async def test_cancel_follows_the_table_from_every_state(backend: Backend, state: State) -> None:
    task_id = await task_in_state(backend, state)
    before = await backend.task_get(task_id)
    assert before.state is state
    if states.allowed(state, "cancel"):
        assert (await backend.task_cancel(CancelParams(task_id))).state is State.CANCELLED
    else:
        with pytest.raises(InvalidStateTransition):
            await backend.task_cancel(CancelParams(task_id))
        assert await backend.task_get(task_id) == before


@pytest.mark.parametrize("state", list(State))
async def test_replay_and_purge_follow_the_table_from_every_state(backend: Backend, state: State) -> None:
    task_id = await task_in_state(backend, state)
    before = await backend.task_get(task_id)
    replayed = await backend.task_replay(TaskFilter(ids=[task_id]))
    assert replayed == (1 if states.allowed(state, "replay") else 0)
    if not replayed:
        assert await backend.task_get(task_id) == before
        assert await backend.task_purge(TaskFilter(ids=[task_id])) == (1 if state is State.FAILED else 0)


@pytest.mark.parametrize("state", [s for s in State if not states.allowed(s, "claim")])
async def test_claim_never_takes_a_task_outside_pending(backend: Backend, state: State) -> None:
    task_id = await task_in_state(backend, state)
    queue = (await backend.task_get(task_id)).queue
    assert await claim(backend, 10, queues=(queue,)) == []
    assert (await backend.task_get(task_id)).state is state
