"""Bulk submits of one task type: ``submit_many`` / ``TaskDef.map``."""

from __future__ import annotations

import gc
import uuid
from typing import Any

import pytest

from conveyor import Conveyor, InvalidInput, QueueFull
from conveyor.backends.base import TaskFilter
from conveyor.config import load_settings
from conveyor.models import TaskSpec
from conveyor.priority import PriorityRule
from conveyor.task import SubmitOptions


def make_app(**settings: object) -> Conveyor:
    return Conveyor(settings=load_settings(url=f"memory://bulk-{uuid.uuid4().hex}", **settings))


async def test_map_stores_one_task_per_argument_set_in_order() -> None:
    app = make_app()

    @app.task(name="add", queue="math", priority="high")
    def add(a: int, b: int = 0) -> int:
        return a + b

    handles = await add.map_async([{"a": 1}, {"a": 2, "b": 3}, {"a": 4}])
    tasks = [await app.get_async(h.id) for h in handles]
    assert [t.args for t in tasks] == [{"a": 1}, {"a": 2, "b": 3}, {"a": 4}]
    assert {t.queue for t in tasks} == {"math"} and {t.priority for t in tasks} == {8}
    assert len({t.id for t in tasks}) == 3 and all(h.created for h in handles)
    await app.aclose()


async def test_bad_arguments_anywhere_in_the_batch_store_nothing() -> None:
    app = make_app()

    @app.task(name="add")
    def add(a: int) -> int:
        return a

    with pytest.raises(InvalidInput, match="invalid args"):
        await add.map_async([{"a": 1}, {"nope": 2}])
    with pytest.raises(InvalidInput, match="JSON object"):
        await app.submit_many_async("add", [{"a": 1}, [1, 2]])  # type: ignore[list-item]
    with pytest.raises(InvalidInput, match="JSON-serializable"):
        await app.submit_many_async("add", [{"a": 1}, {"a": object()}])
    assert (await app.list_tasks_async(TaskFilter())).items == []
    await app.aclose()


async def test_one_idempotency_key_for_many_tasks_is_refused() -> None:
    app = make_app()
    with pytest.raises(InvalidInput, match="idempotency_key"):
        await app.submit_many_async("x", [{}, {}], SubmitOptions(idempotency_key="k"))
    await app.aclose()


async def test_priority_rules_are_applied_to_each_task() -> None:
    app = make_app(priority_rules=[PriorityRule(args={"repo": "^main$"}, priority=9)])
    handles = await app.submit_many_async("build", [{"repo": "main"}, {"repo": "docs"}])
    assert [(await app.get_async(h.id)).priority for h in handles] == [9, 5]
    await app.aclose()


async def test_a_batch_past_max_length_stores_none_of_it() -> None:
    app = make_app(queues={"small": {"max_length": 2}})
    with pytest.raises(QueueFull):
        await app.submit_many_async("x", [{}, {}, {}], SubmitOptions(queue="small"))
    assert (await app.list_tasks_async(TaskFilter())).items == []
    await app.aclose()


async def test_bulk_submits_pause_the_cyclic_collector_and_restore_it() -> None:
    app = Conveyor("memory://gc-pause")
    seen: list[bool] = []
    backend = await app.backend()
    real = backend.task_enqueue_many

    async def spy(params: Any) -> Any:
        seen.append(gc.isenabled())
        return await real(params)

    backend.task_enqueue_many = spy  # type: ignore[method-assign]
    assert gc.isenabled()
    await app.submit_many_async("t.bulk", [{"i": i} for i in range(300)])
    await app.submit_many_async("t.bulk", [{"i": i} for i in range(3)])
    await app.enqueue_many_async([TaskSpec(name="t.bulk") for _ in range(300)])
    assert seen == [False, True, False] and gc.isenabled()
    gc.disable()
    try:
        await app.submit_many_async("t.bulk", [{"i": i} for i in range(300)])
        assert not gc.isenabled()  # a process that turned it off keeps it off
    finally:
        gc.enable()
