"""Queue bounds set at run time (``FlowStore.queue_bound_set``): stored, replaced, removed."""

from __future__ import annotations

import pytest

from conveyor.backends.base import Backend, EnqueueParams
from conveyor.errors import InvalidInput, QueueFull

from .helpers import new_task


async def test_bounds_are_set_replaced_and_removed(backend: Backend) -> None:
    assert await backend.queue_bounds() == {}
    await backend.queue_bound_set("emails", 10)
    await backend.queue_bound_set("reports", 2)
    await backend.queue_bound_set("emails", 20)
    assert await backend.queue_bounds() == {"emails": 20, "reports": 2}
    await backend.queue_bound_set("reports", None)
    await backend.queue_bound_set("never-bounded", None)  # removing nothing is fine
    assert await backend.queue_bounds() == {"emails": 20}


@pytest.mark.parametrize("bad", [0, -3, 2**31, True, 1.5, "7"])
async def test_a_bad_bound_is_refused_and_nothing_changes(backend: Backend, bad: object) -> None:
    await backend.queue_bound_set("emails", 4)
    with pytest.raises(InvalidInput, match="max_length"):
        await backend.queue_bound_set("emails", bad)  # type: ignore[arg-type]
    assert await backend.queue_bounds() == {"emails": 4}


async def test_a_stored_bound_is_enforced_when_passed_to_enqueue(backend: Backend) -> None:
    """What submitters do (``Conveyor.max_lengths_async``): read the bounds, pass them on."""
    await backend.queue_bound_set("small", 1)
    bounds = await backend.queue_bounds()
    await backend.task_enqueue_many(EnqueueParams([new_task(queue="small")], bounds))
    with pytest.raises(QueueFull):
        await backend.task_enqueue_many(EnqueueParams([new_task(queue="small")], bounds))
