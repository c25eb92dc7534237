"""``task_restore``: tasks stored exactly as given, in any state, into another store
of the same engine, and they go on from there as they would have."""

from __future__ import annotations

import time

from conveyor.backends.base import Backend, CancelParams, ReapParams, TaskFilter
from conveyor.ids import new_id
from conveyor.states import State

from .helpers import all_tasks, claim, claim_one, complete, enqueue, new_task, submit, task_in_state


async def _one_of_each(backend: Backend) -> None:
    for state in State:
        await task_in_state(backend, state)
    await submit(backend, queue="keyed", idempotency_key="order-42", labels=["a", "b"])
    wf = new_id()
    a = new_task(workflow_id=wf, workflow_key="a", queue="wf")
    b = new_task(workflow_id=wf, workflow_key="b", queue="wf", depends_on=[a.id], headers={"request_id": "r1"})
    await enqueue(backend, a, b)


async def test_restored_tasks_read_back_exactly_as_exported(backend: Backend, other_backend: Backend) -> None:
    await _one_of_each(backend)
    exported = await all_tasks(backend)  # what ``conveyor export`` writes: every task, newest first
    assert await other_backend.task_restore(exported) == len(exported)
    for task in exported:
        assert (await other_backend.task_get(task.id)).model_dump() == task.model_dump()
    before, after = await backend.stats(), await other_backend.stats()
    assert after.counts == before.counts and after.dlq_size == before.dlq_size
    assert {q.name: q.counts for q in await other_backend.queue_list()} == {
        q.name: q.counts for q in await backend.queue_list()
    }
    assert [t.id for t in await all_tasks(other_backend)] == [t.id for t in await all_tasks(backend)]


async def test_a_second_restore_skips_what_is_stored(backend: Backend, other_backend: Backend) -> None:
    await _one_of_each(backend)
    exported = await all_tasks(backend)
    assert await other_backend.task_restore(exported[:3]) == 3
    assert await other_backend.task_restore(exported) == len(exported) - 3
    assert await other_backend.task_restore(exported) == 0
    assert len(await all_tasks(other_backend)) == len(exported)


async def test_restored_tasks_go_on_from_their_state(backend: Backend, other_backend: Backend) -> None:
    wf = new_id()
    parent = new_task(workflow_id=wf, workflow_key="p", queue="go")
    child = new_task(workflow_id=wf, workflow_key="c", queue="go", depends_on=[parent.id])
    await enqueue(backend, parent, child)
    dead = await task_in_state(backend, State.FAILED)
    running = await task_in_state(backend, State.RUNNING)
    exported = [await backend.task_get(i) for i in (parent.id, child.id, dead, running)]
    await other_backend.task_restore(exported)
    claimed = await claim_one(other_backend, queues=("go",))
    assert claimed.id == parent.id
    await other_backend.task_finish_many([complete(claimed, 1)])
    assert (await other_backend.task_get(child.id)).state is State.PENDING  # the link was restored
    assert await other_backend.task_replay(TaskFilter(ids=[dead])) == 1
    reaped = await other_backend.task_reap_expired(ReapParams(now=time.time() + 3600))
    assert reaped == [running]  # no worker holds the restored lease: the reaper takes it back
    await other_backend.task_cancel(CancelParams(task_id=child.id))
    assert sorted(c.id for c in await claim(other_backend, 10)) == sorted([dead, running])


async def test_an_idempotency_key_already_taken_skips_the_restored_task(
    backend: Backend, other_backend: Backend
) -> None:
    await submit(other_backend, queue="keyed", idempotency_key="order-42")
    theirs = await backend.task_get(await submit(backend, queue="keyed", idempotency_key="order-42"))
    assert await other_backend.task_restore([theirs]) == 0
    assert len(await all_tasks(other_backend, queue="keyed")) == 1


async def test_a_task_with_a_long_history_is_restored_whole(backend: Backend, other_backend: Backend) -> None:
    """10,000 entries: past what one Lua ``unpack`` can pass to a Redis command."""
    await submit(backend)
    (task,) = await all_tasks(backend)
    entry = task.history[0]
    long = task.model_copy(update={"history": [entry] * 10_000})
    assert await other_backend.task_restore([long]) == 1
    assert len((await other_backend.task_get(task.id)).history) == 10_000
