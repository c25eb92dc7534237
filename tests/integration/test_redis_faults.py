"""The Redis engine through a server crash: a private ``redis-server``, killed and restarted.

Each test starts its own server on a free port, in its own folder, with AOF and
``appendfsync always`` (every acknowledged write is on disk, so a restart loses
nothing), so killing it never disturbs the shared server other tests use.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor, State
from conveyor.errors import BackendUnavailable
from tests.integration.support import WorkerProcess, finished, spawn_worker, wait_registered, wait_until
from tests.integration.tasks_app import build_app, marks_of

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """One ``redis-server`` owned by a test: durable (AOF, fsync always), restartable."""

    def __init__(self, folder: Path, *extra: str) -> None:
        self.folder = folder
        self.port = _free_port()
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0?prefix=faults"

    def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder), "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always", *self.extra]
        log = (self.folder / "redis.log").open("ab")
        self.proc = subprocess.Popen(["redis-server", *args], stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._answers, 10, what="the private redis-server to answer")

    def _answers(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
        return False

    def kill(self) -> None:
        """A crash: SIGKILL, no chance to save anything beyond what is already on disk."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PrivateRedis]:
    folder = tmp_path / "redis"
    folder.mkdir()
    srv = PrivateRedis(folder)
    srv.start()
    yield srv
    srv.kill()


@pytest.fixture
def app(server: PrivateRedis) -> Iterator[Conveyor]:
    client = build_app(server.url)
    yield client
    client.close()


def test_worker_keeps_working_through_a_redis_restart(app: Conveyor, server: PrivateRedis, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    handles = [app.submit("it.once", {"marks": str(marks), "key": f"k{i}", "pause": 0.02}) for i in range(150)]
    worker: WorkerProcess = spawn_worker(server.url, tmp_path, concurrency=4)
    try:
        wait_registered(app, worker)
        wait_until(lambda: len(marks_of(marks, "ran")) >= 20, what="the worker to get going")
        server.kill()
        time.sleep(1.5)  # the worker's claims, outcomes and heartbeats fail meanwhile
        assert worker.proc.poll() is None, worker.output()
        server.start()
        tasks = finished(app, *handles, timeout=60)
        assert worker.proc.poll() is None, worker.output()
    finally:
        worker.kill_group()
    assert [t.state for t in tasks] == [State.SUCCEEDED] * len(tasks)
    runs: dict[str, int] = {}
    for key, _pid in marks_of(marks, "ran"):
        runs[key] = runs.get(key, 0) + 1
    assert set(runs) == {f"k{i}" for i in range(150)}
    for t in tasks:
        # a second run is only allowed where the lease lapsed and the task was recovered
        recovered = sum(h.transition == "lease_expired" for h in t.history)
        assert runs[t.args["key"]] <= 1 + recovered, (t.args["key"], [h.transition for h in t.history])
        # A claim the server applied but whose reply died with it leases a task the
        # worker never saw: its lease lapses, and that attempt counts without a run.
        assert runs[t.args["key"]] <= t.attempts <= runs[t.args["key"]] + recovered, (t.attempts, t.history)


def test_submit_while_redis_is_down_raises_backend_unavailable_and_stores_nothing(
    app: Conveyor, server: PrivateRedis
) -> None:
    first = app.submit("it.record", {"log": "/dev/null", "tag": "before"})
    server.kill()
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as info:
        app.submit("it.record", {"log": "/dev/null", "tag": "during"})
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert "\n" not in message and f"127.0.0.1:{server.port}" in message and "unavailable" in message
    with pytest.raises(BackendUnavailable):
        app.submit_many("it.record", [{"log": "/dev/null", "tag": f"batch{i}"} for i in range(50)])
    server.start()
    stored = app.stats()
    assert sum(stored.counts.values()) == 1  # only the task acknowledged before the crash
    assert app.get(first.id).state is State.PENDING
    server.kill()  # again, now between two calls: the idle sync loop has not seen it
    server.start()
    after = app.submit("it.record", {"log": "/dev/null", "tag": "after"})  # reconnects by itself
    assert app.get(after.id).state is State.PENDING and sum(app.stats().counts.values()) == 2


def test_a_full_redis_refuses_submits_with_backend_unavailable(tmp_path: Path) -> None:
    """``maxmemory`` with ``noeviction`` (what docs/redis.md asks for): a clear error, no partial batch."""
    srv = PrivateRedis(tmp_path, "--maxmemory", "3mb", "--maxmemory-policy", "noeviction")
    srv.start()
    app = build_app(srv.url)
    try:
        stored = 0
        with pytest.raises(BackendUnavailable) as info:
            for _ in range(1000):
                app.submit_many("it.record", [{"log": "/dev/null", "tag": "x" * 200} for _ in range(100)])
                stored += 100
        assert "out of memory" in str(info.value) and "\n" not in str(info.value)
        assert stored > 0
        assert sum(app.stats().counts.values()) == stored  # the refused batch left nothing behind
    finally:
        app.close()
        srv.kill()
