"""Workflows through the app and a real worker: validation before anything is stored,
one batched enqueue, derived state, parent results in every pool, cancel."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, InvalidInput, State, TaskNotFound, WorkflowSpec, WorkflowState
from conveyor.backends.base import EnqueueParams
from conveyor.task import SubmitOptions
from conveyor.worker import Worker, WorkerOptions
from tests.integration.support import APP_PATH, fast_settings, wait_for
from tests.integration.tasks_app import build_app


@pytest.fixture(params=["memory", "sqlite"])
async def app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Conveyor]:
    url = f"memory://wf-{uuid.uuid4().hex}" if request.param == "memory" else f"sqlite:///{tmp_path}/wf.db"
    app = build_app(settings=fast_settings(url))
    yield app
    await app.aclose()


async def _run_until(app: Conveyor, workflow_id: str, pool: str = "async", timeout: float = 20.0) -> Any:
    worker = Worker(app, WorkerOptions(pool=pool, app_path=APP_PATH, concurrency=4))
    runner = asyncio.create_task(worker.run())
    try:

        async def done() -> Any:
            wf = await app.get_workflow_async(workflow_id)
            return wf if wf.state not in (WorkflowState.PENDING, WorkflowState.RUNNING) else None

        return await wait_for(done, timeout, what="the workflow to finish")
    finally:
        worker.stop()
        await asyncio.wait_for(runner, 15)


def _diamond() -> dict[str, Any]:
    return {
        "nodes": [
            {"key": "a", "name": "it.whoami"},
            {"key": "b", "name": "it.where_sync", "args": {"x": 2}, "depends_on": ["a"]},
            {"key": "c", "name": "it.where_sync", "args": {"x": 3}, "depends_on": ["a"], "priority": "high"},
            {"key": "d", "name": "it.whoami", "depends_on": ["b", "c"]},
        ]
    }


async def test_submitted_workflow_stores_every_node_with_its_key_and_parents(app: Conveyor) -> None:
    wf = await app.submit_workflow_async(WorkflowSpec.model_validate(_diamond()))
    assert wf.state is WorkflowState.PENDING
    assert list(wf.nodes) == ["a", "b", "c", "d"]
    a, b, c, d = (wf.nodes[k] for k in "abcd")
    assert [a.state, b.state, c.state, d.state] == [State.PENDING, State.WAITING, State.WAITING, State.WAITING]
    assert d.depends_on == [b.id, c.id] and b.depends_on == [a.id]
    assert c.priority == 8  # "high"
    assert {t.workflow_id for t in wf.nodes.values()} == {wf.id}
    body = wf.model_dump(mode="json")
    assert set(body) == {"id", "state", "nodes"} and body["nodes"]["a"]["workflow_key"] == "a"
    assert (await app.get_workflow_async(wf.id)) == wf


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ([{"key": "a", "name": "it.whoami"}, {"key": "a", "name": "it.whoami"}], "duplicate node key(s) a"),
        ([{"key": "a", "name": "it.whoami", "depends_on": ["zz"]}], "unknown key(s) 'zz'"),
        ([{"key": "a", "name": "it.whoami", "depends_on": ["a"]}], "dependency cycle a -> a"),
        (
            [
                {"key": "r", "name": "it.whoami"},
                {"key": "x", "name": "it.whoami", "depends_on": ["r", "z"]},
                {"key": "y", "name": "it.whoami", "depends_on": ["x"]},
                {"key": "z", "name": "it.whoami", "depends_on": ["y"]},
            ],
            "dependency cycle x -> z -> y -> x",
        ),
        ([{"key": "a", "name": "it.where_sync", "args": {"nope": 1}}], "invalid workflow node 'a'"),
    ],
)
async def test_bad_workflow_is_refused_before_anything_is_stored(
    app: Conveyor, nodes: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(InvalidInput, match="invalid workflow") as info:
        await app.submit_workflow_async(WorkflowSpec.model_validate({"nodes": nodes}))
    assert message in info.value.message
    assert (await app.list_tasks_async()).items == []


def test_builder_refuses_a_node_with_an_unknown_option() -> None:
    app = build_app("memory://wf-builder")
    with pytest.raises(InvalidInput, match="invalid workflow"):
        app.workflow().node("a", "it.whoami", colour="red")


async def test_a_large_dag_is_stored_with_one_engine_call(app: Conveyor) -> None:
    backend = await app.backend()
    calls: list[int] = []
    original = backend.task_enqueue_many

    async def spy(params: EnqueueParams) -> Any:
        calls.append(len(params.tasks))
        return await original(params)

    backend.task_enqueue_many = spy  # type: ignore[method-assign]
    wf = app.workflow()
    wf.node("root", "it.whoami")
    mids = [wf.node(f"m{i}", "it.where_sync", {"x": i}, depends_on=["root"]) for i in range(300)]
    wf.node("sink", "it.whoami", depends_on=mids)
    stored = await wf.submit_async()
    assert calls == [302]
    assert len(stored.nodes) == 302 and stored.nodes["sink"].state is State.WAITING


async def test_workflow_runs_to_succeeded_and_children_read_parent_results(app: Conveyor) -> None:
    wf = app.workflow()
    parts = [wf.node(f"part{i}", "it.where_async", {"x": i}) for i in range(5)]
    wf.node("sum", "it.sum_parents_async", {"extra": 0}, depends_on=[])  # no parents: 0
    nums = [wf.node(f"n{i}", "it.sum_parents", {"extra": i}) for i in range(3)]
    wf.node("total", "it.sum_parents", {"extra": 100}, depends_on=nums)
    wf.node("who", "it.whoami", depends_on=parts)
    stored = await wf.submit_async()
    done = await _run_until(app, stored.id)
    assert done.state is WorkflowState.SUCCEEDED
    assert done.nodes["total"].result == 100 + 0 + 1 + 2
    who = done.nodes["who"].result
    assert who == {"id": done.nodes["who"].id, "name": "it.whoami", "attempt": 1, "workflow_id": stored.id}


@pytest.mark.parametrize("pool", ["threads", "processes"])
async def test_parent_results_reach_sync_tasks_in_every_pool(
    tmp_path: Path, pool: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/pools.db"
    monkeypatch.setenv("CONVEYOR_URL", url)  # process-pool children build their app from it
    app = build_app(settings=fast_settings(url))
    try:
        wf = app.workflow()
        wf.node("one", "it.flaky", {"counter": str(tmp_path / "c1"), "succeed_on": 1})
        wf.node("two", "it.flaky", {"counter": str(tmp_path / "c2"), "succeed_on": 2})
        wf.node("sum", "it.sum_parents", {"extra": 10}, depends_on=["one", "two"])
        wf.node("async_sum", "it.sum_parents_async", depends_on=["one", "two"])
        stored = await wf.submit_async()
        done = await _run_until(app, stored.id, pool=pool, timeout=40)
        assert done.state is WorkflowState.SUCCEEDED, {k: (t.state, t.error) for k, t in done.nodes.items()}
        assert done.nodes["sum"].result == 10 + 1 + 2
        assert done.nodes["async_sum"].result == 3
    finally:
        await app.aclose()


async def test_failed_node_fails_the_workflow_after_the_other_branches_finish(app: Conveyor, tmp_path: Path) -> None:
    wf = app.workflow()
    wf.node("bad", "it.bad_input", {"counter": str(tmp_path / "bad")})
    wf.node("after", "it.whoami", depends_on=["bad"])
    wf.node("fine", "it.whoami")
    stored = await wf.submit_async()
    done = await _run_until(app, stored.id)
    assert done.state is WorkflowState.FAILED
    assert done.nodes["after"].failure_reason == "dependency_failed"
    assert done.nodes["fine"].state is State.SUCCEEDED


async def test_cancel_workflow_cancels_every_unfinished_node(app: Conveyor) -> None:
    wf = app.workflow()
    wf.node("a", "it.whoami", delay=3600)
    wf.node("b", "it.whoami", depends_on=["a"])
    wf.node("c", "it.whoami", depends_on=["b"])
    stored = await wf.submit_async()
    cancelled = await app.cancel_workflow_async(stored.id)
    assert cancelled.state is WorkflowState.CANCELLED
    assert {t.state for t in cancelled.nodes.values()} == {State.CANCELLED}


async def test_unknown_workflow_is_not_found(app: Conveyor) -> None:
    with pytest.raises(TaskNotFound, match="workflow nope not found"):
        await app.get_workflow_async("nope")


async def test_depends_on_submit_option_waits_for_the_parent(app: Conveyor) -> None:
    parent = await app.submit_async("it.whoami", {}, SubmitOptions(delay=3600))
    child = await app.submit_async("it.whoami", {}, SubmitOptions(depends_on=[parent.id]))
    assert (await child.refresh_async()).state is State.WAITING
    with pytest.raises(TaskNotFound):
        await app.submit_async("it.whoami", {}, SubmitOptions(depends_on=["missing"]))


async def test_node_with_a_repeated_idempotency_key_is_the_existing_task(app: Conveyor) -> None:
    first = await app.submit_async("it.whoami", {}, SubmitOptions(idempotency_key="once", delay=3600))
    wf = app.workflow()
    wf.node("shared", "it.whoami", idempotency_key="once", delay=3600)
    wf.node("child", "it.whoami", depends_on=["shared"])
    stored = await wf.submit_async()
    assert stored.nodes["shared"].id == first.id
    assert stored.nodes["child"].depends_on == [first.id]
    assert stored.nodes["child"].state is State.WAITING


async def test_two_nodes_with_one_idempotency_key_are_refused(app: Conveyor) -> None:
    wf = app.workflow()
    wf.node("a", "it.whoami", idempotency_key="w9")
    wf.node("b", "it.whoami", idempotency_key="w9", depends_on=["a"])
    wf.node("c", "it.whoami", idempotency_key="w9", queue="other")  # another queue: another key
    with pytest.raises(InvalidInput, match="'a' and 'b' share idempotency_key 'w9'"):
        await wf.submit_async()
    assert (await app.list_tasks_async()).items == []
