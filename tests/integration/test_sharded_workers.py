"""Real ``conveyor worker`` processes on a sharded ring (two SQLite files): every task
runs once whichever shard holds it, workflows run whole, a killed worker's task is
recovered by the other."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from conveyor import Conveyor, State, WorkflowSpec, WorkflowState
from conveyor.backends.sharded import ShardedBackend
from conveyor.errors import TaskNotFound
from tests.integration.support import SpawnWorker, finished, wait_until
from tests.integration.tasks_app import marks_of


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """Overrides the conftest's: the ``client`` and ``workers`` fixtures use this ring."""
    return f"shards+sqlite:///{tmp_path}/s1.db,/{tmp_path}/s2.db"


def _shards_holding(client: Conveyor, ids: list[str]) -> set[int]:
    backend = client.run_sync(client.backend())
    assert isinstance(backend, ShardedBackend)

    async def where(task_id: str) -> int:
        for i, shard in enumerate(backend.shards):
            try:
                await shard.task_get(task_id)
                return i
            except TaskNotFound:
                continue
        raise AssertionError(f"task {task_id} is on no shard")

    return {client.run_sync(where(task_id)) for task_id in ids}


def test_two_workers_run_every_task_once_across_both_shards(
    client: Conveyor, workers: SpawnWorker, marks: Path
) -> None:
    first, second = workers(concurrency=4), workers(concurrency=4)
    handles = [client.submit("it.once", {"marks": str(marks), "key": f"k{i}", "pause": 0.05}) for i in range(60)]
    assert _shards_holding(client, [h.id for h in handles]) == {0, 1}
    tasks = finished(client, *handles)
    assert all(t.state is State.SUCCEEDED for t in tasks)
    ran = marks_of(marks, "ran")
    assert sorted(key for key, _ in ran) == sorted(f"k{i}" for i in range(60))
    assert {pid for _, pid in ran} == {first.pid, second.pid}


def test_a_workflow_runs_whole_on_its_shard(client: Conveyor, workers: SpawnWorker) -> None:
    spec = WorkflowSpec.model_validate(
        {
            "nodes": [
                {"key": "one", "name": "it.sum_parents", "args": {"extra": 1}},
                {"key": "two", "name": "it.sum_parents", "args": {"extra": 2}},
                {"key": "total", "name": "it.sum_parents", "depends_on": ["one", "two"]},
            ]
        }
    )
    wf = client.submit_workflow(spec)
    assert len(_shards_holding(client, [node.id for node in wf.nodes.values()])) == 1
    workers(concurrency=2)

    def done() -> object:
        got = client.get_workflow(wf.id)
        return got if got.state not in (WorkflowState.PENDING, WorkflowState.RUNNING) else None

    result = wait_until(done, 20.0, what="the workflow to finish")
    assert result.state is WorkflowState.SUCCEEDED  # type: ignore[attr-defined]
    assert client.get(wf.nodes["total"].id).result == 3


@pytest.mark.slow
def test_a_task_of_a_killed_worker_is_run_again_by_the_other(
    client: Conveyor, workers: SpawnWorker, marks: Path
) -> None:
    handle = client.submit("it.slow", {"marks": str(marks), "key": "long", "seconds": 3.0})
    doomed = workers(concurrency=1)
    wait_until(lambda: marks_of(marks, "start"), 15.0, what="the task to start")
    os.kill(doomed.pid, signal.SIGKILL)
    survivor = workers(concurrency=1)
    (task,) = finished(client, handle, timeout=30.0)
    assert task.state is State.SUCCEEDED and task.attempts == 2
    starts = [pid for _, pid in marks_of(marks, "start")]
    assert sorted(starts) == sorted([doomed.pid, survivor.pid])
