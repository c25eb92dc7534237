"""Submit rules on a SQLite file: idempotency keys, delays, and bounded queues."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conveyor import Conveyor, QueueFull, State
from conveyor.backends.base import TaskFilter
from conveyor.config import QueueConfig, Settings
from conveyor.models import TaskSpec
from conveyor.task import SubmitOptions
from tests.integration.support import SpawnWorker, transitions, wait_until
from tests.integration.tasks_app import build_app, read_log


def test_double_submit_with_one_idempotency_key_returns_the_same_task(
    client: Conveyor, db_url: str, tmp_path: Path
) -> None:
    log = str(tmp_path / "log")
    key = SubmitOptions(idempotency_key="order-42")
    first = client.submit("it.record", {"log": log, "tag": "a"}, key)
    second = client.submit("it.record", {"log": log, "tag": "b"}, key)
    other_app = build_app(db_url)  # another client, its own connection
    try:
        third = other_app.submit("it.record", {"log": log, "tag": "c"}, key)
    finally:
        other_app.close()
    same_key_elsewhere = SubmitOptions(idempotency_key="order-42", queue="q2")
    other_queue = client.submit("it.record", {"log": log, "tag": "d"}, same_key_elsewhere)

    assert first.id == second.id == third.id
    assert (first.created, second.created, third.created) == (True, False, False)
    assert other_queue.id != first.id  # keys are unique per queue
    stored = client.list_tasks(TaskFilter(queue="default")).items
    assert [(t.id, t.args["tag"]) for t in stored] == [(first.id, "a")]


def test_delayed_task_starts_no_earlier_than_its_run_at(client: Conveyor, workers: SpawnWorker, tmp_path: Path) -> None:
    workers()
    log = str(tmp_path / "log")
    submitted = time.time()
    handle = client.submit("it.record", {"log": log, "tag": "late"}, SubmitOptions(delay=1.0))
    assert client.get(handle.id).state == State.SCHEDULED

    task = wait_until(lambda: (t := client.get(handle.id)).terminal and t, what="the delayed task to run")
    assert task.state == State.SUCCEEDED
    assert abs(task.run_at.timestamp() - (submitted + 1.0)) < 0.2
    assert task.started_at is not None and task.started_at >= task.run_at
    assert (task.started_at - task.run_at).total_seconds() < 1.0  # and not much later either
    assert transitions(task)[1:] == ["due", "claim", "complete"]
    assert read_log(log) == ["late"]


def _fill_and_check(app: Conveyor, log: str) -> None:
    small = SubmitOptions(queue="small")
    first = app.submit("it.record", {"log": log, "tag": "1"}, small)
    app.submit("it.record", {"log": log, "tag": "2"}, small)
    with pytest.raises(QueueFull):
        app.submit("it.record", {"log": log, "tag": "3"}, small)
    app.submit("it.record", {"log": log, "tag": "elsewhere"})  # other queues are unbounded

    app.cancel(first.id)  # a finished task frees its place...
    batch = [TaskSpec(name="it.record", args={"log": log, "tag": t}, queue="small") for t in ("4", "5")]
    with pytest.raises(QueueFull):
        app.enqueue_many(batch)  # ...but a batch is stored whole or not at all
    tags = sorted(t.args["tag"] for t in app.list_tasks(TaskFilter(queue="small")).items)
    assert tags == ["1", "2"]
    app.submit("it.record", {"log": log, "tag": "4"}, small)


def test_full_queue_refuses_submits_and_stores_nothing(db_url: str, tmp_path: Path) -> None:
    settings = Settings(url=db_url, queues={"small": QueueConfig(max_length=2)})
    app = build_app(db_url, settings=settings)
    try:
        _fill_and_check(app, str(tmp_path / "log"))
    finally:
        app.close()


def test_queue_bound_from_the_config_file_is_enforced(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "conveyor.yaml"
    config.write_text("queues:\n  small:\n    max_length: 2\n")
    monkeypatch.setenv("CONVEYOR_CONFIG", str(config))
    app = build_app(db_url)
    try:
        assert app.settings.max_lengths() == {"small": 2}
        _fill_and_check(app, str(tmp_path / "log"))
    finally:
        app.close()


def test_full_queue_accepts_again_once_a_worker_drains_it(
    client: Conveyor, db_url: str, workers: SpawnWorker, tmp_path: Path
) -> None:
    app = build_app(db_url, settings=Settings(url=db_url, queues={"small": QueueConfig(max_length=3)}))
    try:
        log = str(tmp_path / "log")
        small = SubmitOptions(queue="small")
        handles = [app.submit("it.record", {"log": log, "tag": str(i)}, small) for i in range(3)]
        with pytest.raises(QueueFull):
            app.submit("it.record", {"log": log, "tag": "3"}, small)
        workers(queues=["small"])
        wait_until(lambda: all(app.get(h.id).state == State.SUCCEEDED for h in handles), what="the queue to drain")
        app.submit("it.record", {"log": log, "tag": "3"}, small)
    finally:
        app.close()
