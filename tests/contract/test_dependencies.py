"""Dependencies: ``waiting`` until every dependency succeeds, failing if one does not."""

from __future__ import annotations

import pytest

from conveyor.backends.base import Backend, CancelParams
from conveyor.errors import DependencyNotFound, InvalidInput, TaskNotFound
from conveyor.states import FailureReason, State

from .helpers import all_tasks, claim, claim_one, complete, enqueue, fail, new_task, single_store_only, submit


async def _succeed(backend: Backend, task_id: str) -> None:
    """Claim and complete ``task_id``: the only ready task in its queue."""
    queue = (await backend.task_get(task_id)).queue
    claimed = await claim_one(backend, queues=(queue,))
    assert claimed.id == task_id
    assert await backend.task_finish_many([complete(claimed)]) == [True]


async def test_task_with_unfinished_dependencies_waits_and_is_not_claimable(backend: Backend) -> None:
    parent = await submit(backend, delay=3600)
    (child,) = await enqueue(backend, new_task(depends_on=[parent]))
    assert child.state is State.WAITING
    assert await claim(backend, 10) == []


async def test_dependent_becomes_pending_once_every_dependency_succeeds(backend: Backend) -> None:
    a, b = new_task(queue="a"), new_task(queue="b")
    child = new_task(depends_on=[a.id, b.id])
    await enqueue(backend, a, b, child)
    await _succeed(backend, a.id)
    assert (await backend.task_get(child.id)).state is State.WAITING
    await _succeed(backend, b.id)
    task = await backend.task_get(child.id)
    assert task.state is State.PENDING
    assert (task.history[-1].transition, task.history[-1].state) == ("deps_succeeded", State.PENDING)
    assert [c.id for c in await claim(backend, 10)] == [child.id]


async def test_failed_dependency_fails_its_dependents_down_the_graph(backend: Backend) -> None:
    single_store_only(backend.url, "the first claim must take the root: claim order holds within each shard only")
    root, mid, leaf, bystander = new_task(), new_task(), new_task(), new_task()
    mid.depends_on, leaf.depends_on = [root.id], [mid.id]
    await enqueue(backend, root, mid, leaf, bystander)
    claimed = await claim_one(backend)
    assert claimed.id == root.id
    await backend.task_finish_many([fail(claimed, FailureReason.PERMANENT_ERROR)])
    for task_id in (mid.id, leaf.id):
        task = await backend.task_get(task_id)
        assert (task.state, task.failure_reason) == (State.FAILED, FailureReason.DEPENDENCY_FAILED)
        assert task.history[-1].transition == "dependency_failed"
        assert task.finished_at is not None
    assert (await backend.task_get(bystander.id)).state is State.PENDING


async def test_cancelled_dependency_fails_its_dependents(backend: Backend) -> None:
    parent = await submit(backend)
    child = await submit(backend, depends_on=[parent])
    await backend.task_cancel(CancelParams(parent))
    task = await backend.task_get(child)
    assert (task.state, task.failure_reason) == (State.FAILED, FailureReason.DEPENDENCY_FAILED)


async def test_dependency_that_already_succeeded_lets_the_task_run(backend: Backend) -> None:
    parent = await submit(backend, queue="parents")
    await _succeed(backend, parent)
    (child,) = await enqueue(backend, new_task(depends_on=[parent]))
    assert child.state is State.PENDING
    assert [c.id for c in await claim(backend, 10)] == [child.id]


async def test_dependency_that_already_failed_fails_the_task_at_submit(backend: Backend) -> None:
    parent = await submit(backend)
    await backend.task_cancel(CancelParams(parent))
    (child,) = await enqueue(backend, new_task(depends_on=[parent]))
    assert child.state is State.FAILED
    assert (await backend.task_get(child.id)).failure_reason is FailureReason.DEPENDENCY_FAILED


async def test_dependencies_may_point_at_tasks_in_the_same_batch(backend: Backend) -> None:
    first = new_task(queue="parents")
    second = new_task(depends_on=[first.id])
    done = await enqueue(backend, second, first)
    assert [d.state for d in done] == [State.WAITING, State.PENDING]
    await _succeed(backend, first.id)
    assert (await backend.task_get(second.id)).state is State.PENDING


async def test_unknown_dependency_is_invalid_input_and_stores_nothing(backend: Backend) -> None:
    unknown = "0190f0e0-0000-7000-8000-000000000000"
    with pytest.raises(DependencyNotFound) as caught:
        await enqueue(backend, new_task(), new_task(depends_on=[unknown]))
    assert isinstance(caught.value, InvalidInput) and isinstance(caught.value, TaskNotFound)
    assert caught.value.details["task_id"] == unknown and caught.value.code == "ValidationError"
    assert await all_tasks(backend) == []


async def test_cancelling_a_waiting_task_leaves_its_dependency_alone(backend: Backend) -> None:
    parent = await submit(backend, queue="parents")
    child = await submit(backend, depends_on=[parent])
    await backend.task_cancel(CancelParams(child))
    await _succeed(backend, parent)
    assert (await backend.task_get(child)).state is State.CANCELLED
