"""PostgreSQL outages: a worker keeps working through a server restart, and a submit
while the server is down fails cleanly with ``BackendUnavailable``.

Each test runs its own PostgreSQL cluster (``initdb`` into a temporary folder, as the
``postgres`` OS user, on a free port), so restarting it disturbs no other test.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from conveyor import Conveyor, State
from conveyor.errors import BackendUnavailable
from tests.integration.support import finished, spawn_worker, transitions, wait_registered, wait_until
from tests.integration.tasks_app import build_app, marks_of


def _pg_bin() -> Path | None:
    root = Path("/usr/lib/postgresql")
    versions = sorted((p for p in root.glob("*/bin/initdb")), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    """A private PostgreSQL cluster run by the ``postgres`` OS user."""

    bin: Path
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, schema: str = "faults") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres?schema={schema}&connect_timeout=2"

    def ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        command = [str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w"]
        command += ["-o", options, *args]
        subprocess.run(["su", "postgres", "-c", subprocess.list2cmdline(command)], check=True, timeout=60)

    def start(self) -> None:
        self.ctl("start")

    def stop(self) -> None:
        self.ctl("-m", "fast", "stop")


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    pg_bin = _pg_bin()
    if pg_bin is None or os.geteuid() != 0 or shutil.which("su") is None:
        pytest.skip("needs PostgreSQL server binaries and root (to run initdb as the postgres user)")
    user = pwd.getpwnam("postgres")
    root = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
    os.chown(root, user.pw_uid, user.pw_gid)
    initdb = [str(pg_bin / "initdb"), "-D", str(root / "data"), "-A", "trust", "-U", "postgres", "--no-sync"]
    subprocess.run(
        ["su", "postgres", "-c", subprocess.list2cmdline(initdb)], check=True, capture_output=True, timeout=120
    )
    c = Cluster(pg_bin, root, _free_port())
    c.start()
    try:
        yield c
    finally:
        subprocess.run(
            ["su", "postgres", "-c", f"{pg_bin / 'pg_ctl'} -D {c.data} -m immediate stop"],
            check=False,
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_client(cluster: Cluster) -> Iterator[Conveyor]:
    app = build_app(cluster.url())
    app.migrate()
    yield app
    app.close()


def test_worker_keeps_working_through_a_postgresql_restart(
    cluster: Cluster, pg_client: Conveyor, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    handles = [pg_client.submit("it.slow", {"marks": str(marks), "key": f"t{i}", "seconds": 0.2}) for i in range(40)]
    worker = spawn_worker(cluster.url(), tmp_path, concurrency=4)
    try:
        wait_registered(pg_client, worker)
        wait_until(lambda: len(marks_of(marks, "done")) >= 8, what="some tasks to finish before the restart")

        cluster.stop()
        with pytest.raises(BackendUnavailable) as refused:
            pg_client.submit("it.slow", {"marks": str(marks), "key": "during-outage", "seconds": 0})
        time.sleep(1.0)  # the worker's claims, outcomes and heartbeats fail meanwhile
        cluster.start()

        tasks = finished(pg_client, *handles, timeout=60)
        assert worker.proc.poll() is None, worker.output()
        log = worker.output()
    finally:
        worker.kill_group()

    assert "unavailable" in log  # the worker did meet the outage, and carried on

    message = str(refused.value)
    assert "\n" not in message and "unavailable" in message and "nothing was half-written" in message
    assert all(t.state is State.SUCCEEDED for t in tasks), [(t.args["key"], t.state) for t in tasks]
    done = Counter(key for key, _ in marks_of(marks, "done"))
    for t in tasks:
        runs = done[t.args["key"]]
        assert runs >= 1
        if runs > 1:  # only a lapsed lease may run a task again
            assert "lease_expired" in transitions(t) and t.attempts >= runs, (t.args["key"], transitions(t))
    stored = {t.args.get("key") for t in pg_client.list_tasks(limit=1000).items}
    assert "during-outage" not in stored and len(stored) == 40


def test_submit_while_the_server_is_down_raises_backend_unavailable(cluster: Cluster, pg_client: Conveyor) -> None:
    cluster.stop()
    try:
        for _ in range(2):  # first on a pooled connection the restart broke, then on a refused new one
            started = time.monotonic()
            with pytest.raises(BackendUnavailable) as refused:
                pg_client.submit("it.once", {"marks": "/nonexistent", "key": "k"})
            assert time.monotonic() - started < 10
            assert "\n" not in str(refused.value)
    finally:
        cluster.start()
    assert pg_client.list_tasks().items == []
    pg_client.submit("it.once", {"marks": "/nonexistent", "key": "k"})
    assert len(pg_client.list_tasks().items) == 1
    cluster.stop()  # again, now between two calls: the pooled connections are dead
    cluster.start()
    pg_client.submit("it.once", {"marks": "/nonexistent", "key": "k2"})  # the first call after it
    assert len(pg_client.list_tasks().items) == 2


def test_concurrent_submits_while_the_server_is_down_each_fail_and_none_hangs(
    cluster: Cluster, pg_client: Conveyor
) -> None:
    """Submits from many threads share statements (``conveyor.backends.gather``): an
    outage must reach every caller of a shared statement, and nothing may be half-stored."""

    def submit_all(key: str, callers: int = 12) -> list[BaseException | None]:
        def one(i: int) -> BaseException | None:
            try:
                pg_client.submit("it.once", {"marks": "/nonexistent", "key": f"{key}-{i}"})
            except BaseException as exc:
                return exc
            return None

        with ThreadPoolExecutor(callers) as pool:
            return list(pool.map(one, range(callers), timeout=30))

    assert submit_all("before", 1) == [None]  # the backend is open: its pool's connections die
    cluster.stop()
    try:
        started = time.monotonic()
        outcomes = submit_all("down")
        assert all(isinstance(o, BackendUnavailable) for o in outcomes), outcomes
        assert time.monotonic() - started < 20
    finally:
        cluster.start()
    assert submit_all("up") == [None] * 12
    stored = sorted(t.args["key"] for t in pg_client.list_tasks(limit=100).items)
    assert stored == sorted(["before-0", *(f"up-{i}" for i in range(12))])


def test_after_a_long_outage_the_first_call_finds_the_server_again(cluster: Cluster, pg_client: Conveyor) -> None:
    """Calls keep failing through a 10 s outage; the one right after the restart works
    (the pool's reconnect delay doubles, but never for longer than ``RECONNECT_CHAIN``)."""
    pg_client.submit("it.once", {"marks": "/nonexistent", "key": "before"})
    cluster.stop()
    try:
        down_until = time.monotonic() + 10
        while time.monotonic() < down_until:
            with pytest.raises(BackendUnavailable):
                pg_client.submit("it.once", {"marks": "/nonexistent", "key": "during"})
    finally:
        cluster.start()
    started = time.monotonic()
    pg_client.submit("it.once", {"marks": "/nonexistent", "key": "after"})
    assert time.monotonic() - started < 5
    assert sorted(t.args["key"] for t in pg_client.list_tasks().items) == ["after", "before"]


def test_two_workers_share_the_private_cluster_without_running_a_task_twice(
    cluster: Cluster, pg_client: Conveyor, tmp_path: Path
) -> None:
    """A sanity check of the fixture itself: the cluster serves ordinary work."""
    marks = tmp_path / "marks2"
    marks.mkdir()
    handles = [pg_client.submit("it.once", {"marks": str(marks), "key": f"k{i}"}) for i in range(20)]
    procs = [spawn_worker(cluster.url(), tmp_path) for _ in range(2)]
    try:
        tasks = finished(pg_client, *handles, timeout=60)
    finally:
        for p in procs:
            p.kill_group()
    assert all(t.state is State.SUCCEEDED for t in tasks)
    assert Counter(key for key, _ in marks_of(marks, "ran")) == Counter(f"k{i}" for i in range(20))
