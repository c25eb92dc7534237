"""What only the SQLite engine has: its URL, pragmas, migrations, SQL files, query
plans, and sharing one file between threads and processes. The behaviour every
engine shares is in ``tests/contract``."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import states
from conveyor.backends import make_backend
from conveyor.backends import sqlite as sqlite_module
from conveyor.backends.base import (
    CancelParams,
    ClaimParams,
    EnqueueParams,
    ListParams,
    Outcome,
    TaskFilter,
    WaitParams,
)
from conveyor.backends.sqlfiles import load_migrations, parse_queries, render
from conveyor.backends.sqlite import SqliteBackend, parse_url
from conveyor.backends.sqlite_ops import Q, TaskOps
from conveyor.errors import BackendUnavailable, InvalidInput
from conveyor.ids import new_id
from conveyor.models import NewTask
from conveyor.states import FailureReason


def _task(queue: str = "default", priority: int = 5) -> NewTask:
    now = time.time()
    return NewTask(id=new_id(), name="unit.task", args={}, queue=queue, priority=priority, run_at=now, created_at=now)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/conveyor.db"  # tmp_path is absolute: four slashes


@pytest.fixture
async def backend(url: str) -> AsyncIterator[SqliteBackend]:
    b = SqliteBackend(url)
    await b.open()
    yield b
    await b.close()


@contextlib.contextmanager
def _raw(url: str) -> Iterator[sqlite3.Connection]:
    """A plain connection of our own to the backend's file."""
    db = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        yield db
    finally:
        db.close()


async def _on_connection(backend: SqliteBackend, sql: str) -> Any:
    """Run one statement on the backend's own connection, on its own thread."""
    return await backend._run(lambda: backend.ops.conn.execute(sql).fetchone()[0])


# --- URLs ----------------------------------------------------------------------------


def test_url_with_three_slashes_is_relative_to_the_working_directory() -> None:
    assert parse_url("sqlite:///data/conveyor.db") == ("data/conveyor.db", 5000)


def test_url_with_four_slashes_is_absolute() -> None:
    assert parse_url("sqlite:////var/lib/conveyor.db") == ("/var/lib/conveyor.db", 5000)


def test_url_may_set_the_busy_timeout() -> None:
    assert parse_url("sqlite:///c.db?busy_timeout=250") == ("c.db", 250)


@pytest.mark.parametrize(
    "bad",
    [
        "sqlite://",
        "sqlite:///",
        "sqlite://host/c.db",
        "sqlite:///:memory:",
        "sqlite:///c.db?journal=off",
        "sqlite:///c.db?busy_timeout=soon",
        "postgresql://localhost/db",
    ],
)
def test_malformed_url_is_invalid_input(bad: str) -> None:
    with pytest.raises(InvalidInput):
        parse_url(bad)


async def test_relative_url_opens_a_file_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    b = make_backend("sqlite:///relative.db")
    await b.open()
    await b.close()
    assert (tmp_path / "relative.db").is_file()


async def test_missing_directory_is_a_clear_error_not_created(tmp_path: Path) -> None:
    b = SqliteBackend(f"sqlite:///{tmp_path}/missing/conveyor.db")
    with pytest.raises(InvalidInput, match="does not exist"):
        await b.open()
    assert not (tmp_path / "missing").exists()


# --- connection settings and migrations ------------------------------------------------


async def test_database_runs_in_wal_mode_with_normal_sync_and_a_busy_timeout(backend: SqliteBackend) -> None:
    assert await _on_connection(backend, "PRAGMA journal_mode") == "wal"
    assert await _on_connection(backend, "PRAGMA synchronous") == 1  # NORMAL
    assert await _on_connection(backend, "PRAGMA busy_timeout") == 5000


async def test_one_by_one_submits_leave_wal_checkpoints_to_the_connection_thread(
    backend: SqliteBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "FAST_CHECKPOINT_EVERY", 10)
    threads: list[str] = []
    real = TaskOps.checkpoint

    def checkpoint(self: TaskOps) -> None:
        threads.append(threading.current_thread().name)
        real(self)

    monkeypatch.setattr(TaskOps, "checkpoint", checkpoint)
    assert backend._fast_ops is not None
    assert backend._fast_ops.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    for _ in range(25):
        await backend.task_enqueue_many(EnqueueParams([_task()]))
    await backend._run(lambda: None)  # the executor is FIFO: queued checkpoints ran
    assert len(threads) == 2 and all(name.startswith("conveyor-sqlite") for name in threads)


async def test_migrations_are_recorded_and_applied_once(url: str, backend: SqliteBackend) -> None:
    names = [name for name, _ in load_migrations("sqlite")]
    assert names and names[0] == "0001_init"
    assert await backend.migrate() == []
    again = SqliteBackend(url)
    await again.open()
    try:
        assert await again.migrate() == []
    finally:
        await again.close()
    with _raw(url) as db:
        recorded = [row[0] for row in db.execute("SELECT name FROM conveyor_migrations")]
    assert recorded == names


async def test_without_auto_migrate_the_schema_waits_for_migrate(url: str) -> None:
    b = SqliteBackend(url, auto_migrate=False)
    await b.open()
    try:
        with pytest.raises(BackendUnavailable, match="conveyor migrate"):
            await b.task_get(new_id())
        assert await b.migrate() == [name for name, _ in load_migrations("sqlite")]
        (done,) = await b.task_enqueue_many(EnqueueParams([_task()]))
        assert done.created
    finally:
        await b.close()


async def test_a_closed_backend_refuses_work(url: str) -> None:
    b = SqliteBackend(url)
    await b.open()
    await b.close()
    with pytest.raises(BackendUnavailable, match="not open"):
        await b.task_enqueue_many(EnqueueParams([_task()]))


async def test_a_database_locked_too_long_is_unavailable_and_nothing_is_written(url: str) -> None:
    b = SqliteBackend(url + "?busy_timeout=100")
    await b.open()
    try:
        with _raw(url) as holder:
            holder.execute("BEGIN IMMEDIATE")
            started = time.monotonic()
            with pytest.raises(BackendUnavailable, match="locked"):
                await b.task_enqueue_many(EnqueueParams([_task()]))
            assert time.monotonic() - started < 2.0
        assert (await b.task_list(ListParams())).items == []
    finally:
        await b.close()


# --- SQL files ---------------------------------------------------------------------------


def test_state_placeholders_come_from_the_transition_table() -> None:
    assert render("state {from:claim}") == "state = 'pending'"
    assert render("state {from:due}") == "state IN ('retrying','scheduled')"
    assert render("{to:claim}") == f"'{states.target('claim').value}'"
    with pytest.raises(KeyError):
        render("{from:teleport}")


def test_named_queries_split_on_headers_and_include_earlier_fragments() -> None:
    text = "-- name: cond\n-- a fragment\nx = 1\n\n-- name: query\nSELECT 1 WHERE {include:cond};\n"
    assert parse_queries(text) == {"cond": "-- a fragment\nx = 1", "query": "SELECT 1 WHERE x = 1"}
    with pytest.raises(KeyError):
        parse_queries("-- name: query\nSELECT {include:later}\n-- name: later\n1\n")


async def test_partial_indexes_spell_the_states_the_queries_use(url: str, backend: SqliteBackend) -> None:
    with _raw(url) as db:
        sql = dict(db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"))
    assert sql["tasks_ready"].endswith(render("WHERE state {from:claim}"))
    assert sql["tasks_due"].endswith(render("WHERE state {from:due}"))
    assert sql["tasks_leases"].endswith(render("WHERE state = {to:claim}"))


async def test_task_counts_follow_every_change_of_the_tasks_table(url: str, backend: SqliteBackend) -> None:
    tasks = [_task(queue=q, priority=p) for q in ("a", "b") for p in (1, 5, 9) for _ in range(3)]
    await backend.task_enqueue_many(EnqueueParams(tasks))
    claimed = (await backend.task_claim(ClaimParams("w", 7, 30.0))).tasks
    done = [Outcome(t.id, t.lease_token, "complete") for t in claimed[:3]]
    failed = [Outcome(t.id, t.lease_token, "fail", failure_reason=FailureReason.PERMANENT_ERROR) for t in claimed[3:5]]
    assert await backend.task_finish_many(done + failed) == [True] * 5
    await backend.task_cancel(CancelParams(tasks[-1].id))
    assert await backend.task_purge(TaskFilter(queue="a")) >= 0
    assert await backend.task_replay(TaskFilter(queue="b")) >= 0
    with _raw(url) as db:
        real = sorted(db.execute("SELECT queue, state, priority, count(*) FROM tasks GROUP BY 1, 2, 3"))
        kept = sorted(db.execute("SELECT queue, state, priority, n FROM task_counts WHERE n != 0"))
    assert kept == real and len(real) > 4


async def test_the_dead_letter_listing_reads_its_partial_index(url: str, backend: SqliteBackend) -> None:
    args = {"queue": None, "name": None, "label": None, "cursor": None, "limit": 10}
    with _raw(url) as db:
        plan = _plan(db, Q["list_dead"], **args)
    assert any("USING INDEX tasks_dead" in text for _, _, text in plan), plan
    assert not any(text.startswith("SCAN tasks") and "INDEX" not in text for _, _, text in plan), plan


def _plan(db: sqlite3.Connection, query: str, **params: Any) -> list[tuple[int, int, str]]:
    return [(row[0], row[1], row[3]) for row in db.execute("EXPLAIN QUERY PLAN " + query, params)]


@pytest.mark.parametrize("query", ["claim_queues", "claim_all"])
async def test_claim_walks_the_ready_index_and_sorts_only_the_rows_it_takes(
    url: str, backend: SqliteBackend, query: str
) -> None:
    params = {"now": 0.0, "at": "0.0", "limit": 10, "worker_id": "w", "expires": 30.0, "tags": "[]"}
    with _raw(url) as db:
        plan = _plan(db, Q[query], queues='["a","b"]', **params)
    scans = [(node, parent) for node, parent, text in plan if "USING INDEX tasks_ready (queue=?)" in text]
    assert len(scans) == 1, plan
    scan_parent = scans[0][1]
    sorts = [parent for _, parent, text in plan if "TEMP B-TREE" in text]
    assert scan_parent not in sorts, "the backlog of a queue must be read in index order, not sorted"
    table_scans = [text for _, _, text in plan if text.split()[:2] in (["SCAN", "t"], ["SCAN", "c"])]
    assert table_scans == [], plan


# --- one file, many threads and processes --------------------------------------------------


async def test_backends_on_other_threads_see_each_others_writes(url: str, backend: SqliteBackend) -> None:
    task = _task()

    async def elsewhere() -> list[str]:
        b = SqliteBackend(url)
        await b.open()
        try:
            await b.task_enqueue_many(EnqueueParams([task]))
            return [t.id for t in (await b.task_list(ListParams())).items]
        finally:
            await b.close()

    seen_there = await asyncio.to_thread(asyncio.run, elsewhere())
    assert seen_there == [task.id]
    claimed = (await backend.task_claim(ClaimParams("w1", 5, 30))).tasks
    assert [c.id for c in claimed] == [task.id]


async def test_same_process_enqueue_wakes_a_waiter_without_polling(
    url: str, backend: SqliteBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "POLL_MIN", 30.0)  # only the notifier can wake it now
    monkeypatch.setattr(sqlite_module, "POLL_MAX", 30.0)
    waiter = asyncio.create_task(backend.task_wait(WaitParams(timeout=20)))
    await asyncio.sleep(0.1)
    assert not waiter.done()

    async def submit() -> float:
        b = SqliteBackend(url)
        await b.open()
        try:
            await b.task_enqueue_many(EnqueueParams([_task()]))
            return time.monotonic()
        finally:
            await b.close()

    committed = await asyncio.to_thread(asyncio.run, submit())
    await asyncio.wait_for(waiter, 5)
    assert time.monotonic() - committed < 1.0


async def test_a_commit_elsewhere_after_the_last_claim_makes_the_next_wait_return_at_once(
    url: str, backend: SqliteBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "POLL_MIN", 30.0)
    monkeypatch.setattr(sqlite_module, "POLL_MAX", 30.0)
    assert (await backend.task_claim(ClaimParams("w1", 5, 30))).tasks == []
    with _raw(url) as other:
        other.execute("CREATE TABLE scratch (x)")  # any commit by another connection
    started = time.monotonic()
    await backend.task_wait(WaitParams(timeout=20))
    assert time.monotonic() - started < 1.0
    started = time.monotonic()
    await backend.task_wait(WaitParams(timeout=0.2))  # that commit is no news any more
    assert time.monotonic() - started >= 0.15


CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from conveyor.backends import make_backend
    from conveyor.backends.base import ClaimParams, EnqueueParams
    from conveyor.ids import new_id
    from conveyor.models import NewTask

    async def main(url, mode, n):
        b = make_backend(url)
        await b.open()
        try:
            if mode == "enqueue":
                now = time.time()
                tasks = [NewTask(new_id(), "child.task", {"i": i}, "default", 5, now, now) for i in range(n)]
                await b.task_enqueue_many(EnqueueParams(tasks))
                print(time.time(), flush=True)
            else:
                while batch := (await b.task_claim(ClaimParams(mode, 3, 30))).tasks:
                    print(*(t.id for t in batch), sep="\\n", flush=True)
        finally:
            await b.close()

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


async def _child(url: str, mode: str, n: int = 0) -> list[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, url, mode, str(n), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    return out.decode().split()


async def test_a_task_enqueued_by_another_process_is_seen_and_claimed(url: str, backend: SqliteBackend) -> None:
    await _child(url, "enqueue", 20)
    page = await backend.task_list(ListParams(limit=100))
    assert len(page.items) == 20 and {t.name for t in page.items} == {"child.task"}
    assert len((await backend.task_claim(ClaimParams("w1", 50, 30))).tasks) == 20


async def test_claimers_in_two_processes_never_take_the_same_task(url: str, backend: SqliteBackend) -> None:
    tasks = [_task() for _ in range(300)]
    await backend.task_enqueue_many(EnqueueParams(tasks))
    first, second = await asyncio.gather(_child(url, "p1"), _child(url, "p2"))
    assert not set(first) & set(second)
    assert sorted(first + second) == sorted(t.id for t in tasks)


async def test_task_wait_wakes_promptly_on_an_enqueue_from_another_process(url: str, backend: SqliteBackend) -> None:
    child = asyncio.create_task(_child(url, "enqueue", 1))
    woke_at = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        await backend.task_wait(WaitParams(timeout=30))
        if (await backend.task_list(ListParams())).items:
            woke_at = time.time()
            break
    (committed,) = await child
    assert woke_at is not None
    assert woke_at - float(committed) < 0.5
