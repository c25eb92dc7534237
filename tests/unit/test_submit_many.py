"""Bulk submits: ``submit_many`` / ``TaskDef.map`` (one task type) and ``enqueue_many`` (specs)."""

from __future__ import annotations

import gc
import time
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, InvalidInput, QueueFull
from conveyor.backends.base import EnqueueParams, TaskFilter
from conveyor.backends.sqlite_ops import INSERT_CHUNK
from conveyor.config import load_settings
from conveyor.errors import TaskExists
from conveyor.models import TaskSpec
from conveyor.priority import PriorityRule
from conveyor.retry import RetryPolicy
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
    handles = await app.submit_many_async("build", [{"repo": "main"}, {"repo": "docs"}, {}, {"other": "main"}])
    assert [(await app.get_async(h.id)).priority for h in handles] == [9, 5, 5, 5]
    await app.aclose()


async def test_tasks_whose_args_no_rule_reads_get_the_rules_answer_without_args() -> None:
    """The first task of a batch matched an args rule; later ones without that arg
    still go through the other rules (here a label rule), in order."""
    rules = [PriorityRule(args={"repo": "^main$"}, priority=9), PriorityRule(labels="^urgent$", priority=7)]
    app = make_app(priority_rules=rules)
    args = [{"repo": "main"}, {"n": 1}, {"repo": "docs"}, {}]
    plain = await app.submit_many_async("build", args)
    urgent = await app.submit_many_async("build", args, SubmitOptions(labels=("urgent",)))
    assert [(await app.get_async(h.id)).priority for h in plain] == [9, 5, 5, 5]
    assert [(await app.get_async(h.id)).priority for h in urgent] == [9, 7, 7, 7]
    one_by_one = [await app.submit_async("build", a, SubmitOptions(labels=("urgent",))) for a in args]
    assert [(await app.get_async(h.id)).priority for h in one_by_one] == [9, 7, 7, 7]
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


async def test_enqueue_many_resolves_each_spec_as_build_does() -> None:
    """Defaults are resolved once per distinct name and options: every task must
    come out as ``build`` makes it, whatever the mix of specs in the batch."""
    app = make_app(priority_rules=[PriorityRule(args={"repo": "^main$"}, priority=9)])

    @app.task(name="deploy", queue="ops", priority="high", labels=["infra"], max_retries=7, timeout=30)
    def deploy(repo: str = "") -> None: ...

    at = datetime(2030, 1, 1, tzinfo=UTC)
    specs = [
        TaskSpec(name="deploy"),
        TaskSpec(name="deploy", args={"repo": "main"}),
        TaskSpec(name="deploy", queue="ops-2", delay=60),
        TaskSpec(name="build", args={"repo": "main"}),
        TaskSpec(name="build", args={"repo": "docs"}, run_at=at),
        TaskSpec(name="build", args={"repo": "main"}, priority=1, idempotency_key="k1"),
        TaskSpec(name="build", labels=["a"], requires=["gpu"], depends_on=["x"]),
        TaskSpec(name="build", retry=RetryPolicy(max_retries=1), max_retries=2, timeout=5),
        TaskSpec(name="build", retry=RetryPolicy(max_retries=1)),
    ]
    specs += [s.model_copy(deep=True) for s in specs]  # repeats take the resolved path
    now = time.time()
    built = app._build_many(specs, now)
    expected = [app.build(s, now, t.id) for s, t in zip(specs, built, strict=True)]
    assert [asdict(t) for t in built] == [asdict(t) for t in expected]
    assert [t.priority for t in built[3:6]] == [9, 5, 1]  # rules read each task's args
    await app.aclose()


async def test_enqueue_many_checks_args_of_every_spec() -> None:
    app = make_app()

    @app.task(name="add")
    def add(a: int) -> int:
        return a

    with pytest.raises(InvalidInput, match="invalid args"):
        await app.enqueue_many_async([TaskSpec(name="add", args={"a": 1}), TaskSpec(name="add", args={"b": 1})])
    with pytest.raises(InvalidInput, match="JSON-serializable"):
        await app.enqueue_many_async([TaskSpec(name="t"), TaskSpec(name="t", args={"a": object()})])
    assert (await app.list_tasks_async(TaskFilter())).items == []
    await app.aclose()


@pytest.mark.parametrize("count", [1, INSERT_CHUNK, 2 * INSERT_CHUNK + 7])
async def test_sqlite_stores_every_task_of_a_batch_across_insert_chunks(tmp_path: Path, count: int) -> None:
    """SQLite inserts ``INSERT_CHUNK`` rows per statement and the rest one by one."""
    app = Conveyor(f"sqlite:///{tmp_path}/bulk.db")
    specs = [TaskSpec(name="t.bulk", args={"i": i}, labels=[f"l{i % 3}"], priority=i % 11) for i in range(count)]
    handles = await app.enqueue_many_async(specs)
    for spec, handle in zip(specs, handles, strict=True):
        task = await app.get_async(handle.id)
        assert (task.args, task.labels, task.priority) == (spec.args, spec.labels, spec.priority)
        assert task.updated_at == task.created_at and task.history[0].at == task.created_at
    counts = {q.name: q.counts for q in await app.queues_async()}
    assert counts["default"]["pending"] == count
    await app.aclose()


async def test_sqlite_batch_with_a_stored_id_stores_nothing(tmp_path: Path) -> None:
    app = Conveyor(f"sqlite:///{tmp_path}/bulk.db")
    (first,) = await app.enqueue_many_async([TaskSpec(name="t.bulk")])
    now = time.time()
    tasks = app._build_many([TaskSpec(name="t.bulk") for _ in range(2 * INSERT_CHUNK)], now)
    tasks[INSERT_CHUNK + 3].id = first.id  # in the second multi-row statement
    backend = await app.backend()
    with pytest.raises(TaskExists):
        await backend.task_enqueue_many(EnqueueParams(tasks, {}))
    assert [t.id for t in (await app.list_tasks_async(TaskFilter())).items] == [first.id]
    await app.aclose()


def _nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("args", "refused"),
    [
        ({"x": "\ud800"}, "not valid Unicode"),  # a lone surrogate: no engine can store it
        ({"\udc00": 1}, "not valid Unicode"),
        ({"x": _nested(100)}, "deeper than 100 levels"),  # stored, it could not be read back
        ({"x": "😀 é \u2028"}, None),
        ({"x": _nested(99)}, None),
    ],
)
async def test_args_no_engine_could_store_or_read_back_are_refused_before_anything_is_stored(
    args: dict[str, Any], refused: str | None
) -> None:
    app = make_app()
    for submit in (
        lambda: app.submit_async("t", args),
        lambda: app.submit_many_async("t", [{"n": 1}, args]),
        lambda: app.enqueue_many_async([TaskSpec(name="t"), TaskSpec(name="t", args=args)]),
    ):
        if refused is None:
            await submit()
        else:
            with pytest.raises(InvalidInput, match=refused):
                await submit()
    stored = (await app.list_tasks_async(TaskFilter(), limit=10)).items
    assert len(stored) == (0 if refused else 5)
    for task in stored:
        assert task.args in (args, {"n": 1}, {})
    await app.aclose()
