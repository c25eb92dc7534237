"""Fixtures: a SQLite file per test, a client app on it, and worker subprocesses that
are always killed (with their children) when the test ends."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # workers and process-pool children import tests.integration.*
    sys.path.insert(0, str(ROOT))

from conveyor import Conveyor  # noqa: E402
from tests.integration.support import SpawnWorker, WorkerProcess, fast_settings, spawn_worker, wait_registered  # noqa: E402
from tests.integration.tasks_app import build_app  # noqa: E402


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'conveyor.db'}"


@pytest.fixture
def client(db_url: str) -> Iterator[Conveyor]:
    """The test's own app on the SQLite file (sync API, on its portal thread)."""
    app = build_app(db_url)
    app.migrate()
    yield app
    app.close()


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    folder = tmp_path / "marks"
    folder.mkdir()
    return folder


@pytest.fixture
def workers(client: Conveyor, db_url: str, tmp_path: Path) -> Iterator[SpawnWorker]:
    """``workers(concurrency=.., pool=.., env=..)`` starts a registered worker subprocess."""
    started: list[WorkerProcess] = []

    def start(*, ready: bool = True, **kwargs: Any) -> WorkerProcess:
        worker = spawn_worker(db_url, tmp_path, **kwargs)
        started.append(worker)
        if ready:
            wait_registered(client, worker)
        return worker

    yield start
    for worker in started:
        worker.kill_group()


@pytest.fixture
def memory_url() -> str:
    return f"memory://it-{uuid.uuid4().hex}"


@pytest.fixture
def mem_app(memory_url: str) -> Conveyor:
    """An app on a private in-memory store with fast worker settings."""
    return build_app(memory_url, settings=fast_settings(memory_url))
