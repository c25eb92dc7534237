"""What only the ``memory://`` engine promises; the shared rules live in ``tests/contract``."""

from __future__ import annotations

import uuid

import pytest

from conveyor.backends import Backend, make_backend
from conveyor.backends.base import EnqueueParams, ListParams
from conveyor.backends.memory import MemoryBackend
from conveyor.errors import InvalidInput, TaskNotFound
from conveyor.states import State
from tests.contract.helpers import claim_one, complete, new_task


def fresh_name() -> str:
    return "unit-" + uuid.uuid4().hex


def test_memory_backend_implements_the_whole_contract() -> None:
    backend = make_backend("memory://", offline_after=7.5)
    assert isinstance(backend, MemoryBackend) and isinstance(backend, Backend)
    assert (backend.url, backend.offline_after) == ("memory://", 7.5)


async def test_instances_on_the_same_name_share_one_store() -> None:
    name = fresh_name()
    first, second = MemoryBackend(f"memory://{name}"), MemoryBackend(f"memory://{name}/")
    t = new_task()
    await first.task_enqueue_many(EnqueueParams([t]))
    assert (await second.task_get(t.id)).id == t.id


async def test_instances_on_different_names_are_isolated() -> None:
    t = new_task()
    await MemoryBackend(f"memory://{fresh_name()}").task_enqueue_many(EnqueueParams([t]))
    with pytest.raises(TaskNotFound):
        await MemoryBackend(f"memory://{fresh_name()}").task_get(t.id)


async def test_bare_url_names_the_default_store() -> None:
    t = new_task()
    await MemoryBackend("memory://").task_enqueue_many(EnqueueParams([t]))
    assert (await MemoryBackend("memory://default").task_get(t.id)).id == t.id


async def test_store_outlives_close_like_a_database() -> None:
    url = f"memory://{fresh_name()}"
    backend = MemoryBackend(url)
    await backend.open()
    t = new_task()
    await backend.task_enqueue_many(EnqueueParams([t]))
    await backend.close()
    again = MemoryBackend(url)
    await again.open()
    assert await again.migrate() == []
    assert (await again.task_get(t.id)).state is State.PENDING


async def test_arguments_that_are_not_json_are_refused_and_nothing_is_stored() -> None:
    backend = MemoryBackend(f"memory://{fresh_name()}")
    with pytest.raises(InvalidInput):
        await backend.task_enqueue_many(EnqueueParams([new_task(), new_task(args={"when": object()})]))
    assert (await backend.task_list(ListParams())).items == []


async def test_arguments_come_back_as_json_would_return_them() -> None:
    backend = MemoryBackend(f"memory://{fresh_name()}")
    t = new_task(args={"pair": (1, 2)})
    await backend.task_enqueue_many(EnqueueParams([t]))
    assert (await backend.task_get(t.id)).args == {"pair": [1, 2]}


async def test_a_result_that_is_not_json_refuses_the_whole_outcome_batch() -> None:
    backend = MemoryBackend(f"memory://{fresh_name()}")
    await backend.task_enqueue_many(EnqueueParams([new_task(), new_task()]))
    a, b = await claim_one(backend), await claim_one(backend)
    with pytest.raises(InvalidInput):
        await backend.task_finish_many([complete(a, "fine"), complete(b, {1, 2})])
    assert (await backend.task_get(a.id)).state is State.RUNNING
    assert await backend.task_finish_many([complete(a, "fine"), complete(b, [1, 2])]) == [True, True]
