"""Workflows at the engine: nodes carry ``workflow_id``/``workflow_key``, ``workflow_get``
finds them, and wide fan-in and fan-out settle in one step."""

from __future__ import annotations

from conveyor.backends.base import Backend
from conveyor.ids import new_id
from conveyor.states import State

from .helpers import claim, complete, enqueue, new_task


async def test_workflow_get_returns_the_nodes_with_their_keys_oldest_first(backend: Backend) -> None:
    wf = new_id()
    a = new_task(workflow_id=wf, workflow_key="a")
    b = new_task(workflow_id=wf, workflow_key="b", depends_on=[a.id])
    other = new_task()
    await enqueue(backend, a, b, other)
    tasks = await backend.workflow_get(wf)
    assert [(t.id, t.workflow_key, t.workflow_id) for t in tasks] == [(a.id, "a", wf), (b.id, "b", wf)]
    assert [t.state for t in tasks] == [State.PENDING, State.WAITING]
    assert (await backend.task_get(other.id)).workflow_id is None
    assert (await backend.task_get(b.id)).workflow_key == "b"


async def test_workflow_get_of_an_unknown_workflow_is_empty(backend: Backend) -> None:
    assert await backend.workflow_get(new_id()) == []


async def test_claimed_node_carries_its_workflow_id(backend: Backend) -> None:
    wf = new_id()
    await enqueue(backend, new_task(workflow_id=wf, workflow_key="only"))
    (claimed,) = await claim(backend, 1)
    assert claimed.workflow_id == wf


async def test_fan_in_of_500_parents_releases_the_child_once_the_last_succeeds(backend: Backend) -> None:
    wf = new_id()
    parents = [new_task(queue="parents", workflow_id=wf, workflow_key=f"p{i}") for i in range(500)]
    child = new_task(queue="child", depends_on=[p.id for p in parents], workflow_id=wf, workflow_key="child")
    await enqueue(backend, *parents, child)
    claimed = await claim(backend, 500, queues=("parents",))
    assert len(claimed) == 500
    assert await backend.task_finish_many([complete(c, i) for i, c in enumerate(claimed[:-1])]) == [True] * 499
    assert (await backend.task_get(child.id)).state is State.WAITING
    assert await backend.task_finish_many([complete(claimed[-1], 499)]) == [True]
    assert (await backend.task_get(child.id)).state is State.PENDING
    assert len(await backend.workflow_get(wf)) == 501


async def test_fan_out_to_500_children_makes_them_all_pending_in_one_step(backend: Backend) -> None:
    wf = new_id()
    root = new_task(queue="root", workflow_id=wf, workflow_key="root")
    children = [new_task(queue="kids", depends_on=[root.id], workflow_id=wf, workflow_key=f"c{i}") for i in range(500)]
    await enqueue(backend, root, *children)
    assert await claim(backend, 10, queues=("kids",)) == []
    (claimed,) = await claim(backend, 1, queues=("root",))
    assert await backend.task_finish_many([complete(claimed, "go")]) == [True]
    nodes = await backend.workflow_get(wf)
    assert sum(t.state is State.PENDING for t in nodes) == 500
    assert len(await claim(backend, 1000, queues=("kids",))) == 500
