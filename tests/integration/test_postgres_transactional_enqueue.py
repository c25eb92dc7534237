"""Transactional enqueue: a task submitted in the caller's psycopg transaction exists
if and only if that transaction commits (``conveyor.backends.postgres_tx``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from conveyor import Conveyor, State
from conveyor.backends import SCHEMES
from conveyor.backends.postgres_ops import COPY_FROM
from conveyor.backends.postgres_tx import (
    enqueue_in_transaction,
    enqueue_in_transaction_sync,
    submit_in_transaction,
    submit_in_transaction_sync,
)
from conveyor.errors import InvalidInput, QueueFull, TaskNotFound
from conveyor.models import TaskSpec
from conveyor.worker import Worker, WorkerOptions
from tests.contract.helpers import format_url
from tests.integration.support import APP_PATH, fast_settings, wait_for
from tests.integration.tasks_app import build_app, read_log
from tests.services import drop_store, postgres_url

pytestmark = pytest.mark.skipif("postgresql" not in SCHEMES, reason="the PostgreSQL engine is not registered")


@pytest.fixture
async def pg_app(tmp_path: Path) -> AsyncIterator[Conveyor]:
    template = postgres_url()
    if template is None:
        pytest.fail("no PostgreSQL server for the transactional enqueue tests")
    url = format_url(template, str(tmp_path))
    app = build_app(url, settings=fast_settings(url))
    await app.migrate_async()
    yield app
    await app.aclose()
    drop_store(url)


async def _connect(app: Conveyor) -> psycopg.AsyncConnection[object]:
    """The application's own connection, as a web handler would hold it."""
    conninfo = app.settings.url.split("?", 1)[0]
    return await psycopg.AsyncConnection.connect(conninfo)


async def _orders(conn: psycopg.AsyncConnection[object]) -> None:
    await conn.execute("CREATE TEMPORARY TABLE IF NOT EXISTS orders (id int PRIMARY KEY)")


async def test_committed_submit_exists_and_a_worker_runs_it(pg_app: Conveyor, tmp_path: Path) -> None:
    log = str(tmp_path / "ran.log")
    async with await _connect(pg_app) as conn:
        await _orders(conn)
        async with conn.transaction():
            await conn.execute("INSERT INTO orders VALUES (1)")
            (handle,) = await submit_in_transaction(
                pg_app, conn, [TaskSpec(name="it.record", args={"log": log, "tag": "order-1"})]
            )
            outside = await pg_app.list_tasks_async()
            assert outside.items == []  # not visible before the commit
        path = (await (await conn.execute("SHOW search_path")).fetchone() or [""])[0]
        assert "conveyor" not in str(path) and not str(path).startswith("t")  # the caller's path is restored

    worker = Worker(pg_app, WorkerOptions(app_path=APP_PATH, concurrency=2))
    runner = asyncio.create_task(worker.run())
    try:

        async def done() -> bool:
            return (await pg_app.get_async(handle.id)).state is State.SUCCEEDED

        await wait_for(done, 15, what="the committed task to run")
    finally:
        worker.stop()
        await asyncio.wait_for(runner, 15)
    assert read_log(log) == ["order-1"]


async def test_rolled_back_submit_stores_nothing(pg_app: Conveyor) -> None:
    async with await _connect(pg_app) as conn:
        await _orders(conn)
        with pytest.raises(RuntimeError, match="payment declined"):
            async with conn.transaction():
                await conn.execute("INSERT INTO orders VALUES (2)")
                specs = [TaskSpec(name="it.once", args={"marks": "/x", "key": k}, idempotency_key=k) for k in "ab"]
                handles = await submit_in_transaction(pg_app, conn, specs)
                raise RuntimeError("payment declined")
    for handle in handles:
        with pytest.raises(TaskNotFound):
            await pg_app.get_async(handle.id)
    assert (await pg_app.list_tasks_async()).items == []
    # The keys were never stored: the same submit now creates the tasks.
    again = await pg_app.enqueue_many_async(
        [TaskSpec(name="it.once", args={"marks": "/x", "key": k}, idempotency_key=k) for k in "ab"]
    )
    assert all(h.created for h in again)


async def test_a_refused_batch_leaves_the_callers_transaction_usable(pg_app: Conveyor) -> None:
    schema = pg_app.settings.url.rsplit("schema=", 1)[1]
    async with await _connect(pg_app) as conn:
        await _orders(conn)
        async with conn.transaction():
            await conn.execute("INSERT INTO orders VALUES (3)")
            tasks = [pg_app.build(TaskSpec(name="it.once", args={"marks": "/x", "key": str(i)})) for i in range(3)]
            with pytest.raises(QueueFull):
                await enqueue_in_transaction(conn, tasks, schema=schema, max_length={"default": 2})
            await conn.execute("INSERT INTO orders VALUES (4)")  # still in a healthy transaction
        cur = await conn.execute("SELECT count(*) FROM orders")
        assert await cur.fetchone() == (2,)
    assert (await pg_app.list_tasks_async()).items == []


async def test_a_bound_set_at_run_time_holds_for_a_transactional_submit(pg_app: Conveyor) -> None:
    await pg_app.queue_update_async("bounded", max_length=1)  # stored in the engine, not in config
    specs = [TaskSpec(name="it.once", args={"marks": "/x", "key": str(i)}, queue="bounded") for i in range(2)]
    async with await _connect(pg_app) as conn, conn.transaction():
        with pytest.raises(QueueFull):
            await submit_in_transaction(pg_app, conn, specs)
    assert (await pg_app.list_tasks_async()).items == []


# --- the same on a sync psycopg connection (Django, Flask, SQLAlchemy) ------------------------


def _connect_sync(app: Conveyor, **kwargs: object) -> psycopg.Connection[object]:
    return psycopg.connect(app.settings.url.split("?", 1)[0], **kwargs)  # type: ignore[arg-type]


async def test_sync_submit_exists_only_once_the_transaction_commits(pg_app: Conveyor) -> None:
    with _connect_sync(pg_app, autocommit=True) as conn:  # transaction() blocks commit, as Django's atomic()
        conn.execute("CREATE TEMPORARY TABLE orders (id int PRIMARY KEY)")
        with conn.transaction():
            conn.execute("INSERT INTO orders VALUES (1)")
            (handle,) = submit_in_transaction_sync(
                pg_app, conn, [TaskSpec(name="it.once", args={"marks": "/x", "key": "o-1"})]
            )
            assert (await pg_app.list_tasks_async()).items == []  # not visible before the commit
        assert (await pg_app.get_async(handle.id)).state is State.PENDING
        path = str((conn.execute("SHOW search_path").fetchone() or [""])[0])
        assert "conveyor" not in path and not path.startswith("t")  # the caller's path is restored
        with pytest.raises(RuntimeError, match="declined"), conn.transaction():
            (lost,) = submit_in_transaction_sync(
                pg_app, conn, [TaskSpec(name="it.once", args={"marks": "/x", "key": "o-2"})]
            )
            raise RuntimeError("declined")
    with pytest.raises(TaskNotFound):
        await pg_app.get_async(lost.id)


async def test_sync_submits_refused_or_large_behave_as_async_ones(pg_app: Conveyor) -> None:
    schema = pg_app.settings.url.rsplit("schema=", 1)[1]
    with _connect_sync(pg_app) as conn:
        conn.execute("CREATE TEMPORARY TABLE orders (id int PRIMARY KEY)")
        with conn.transaction():
            conn.execute("INSERT INTO orders VALUES (3)")
            small = [pg_app.build(TaskSpec(name="it.once", args={"marks": "/x", "key": str(i)})) for i in range(3)]
            with pytest.raises(QueueFull):
                enqueue_in_transaction_sync(conn, small, schema=schema, max_length={"default": 2})
            conn.execute("INSERT INTO orders VALUES (4)")  # still in a healthy transaction
            large = [
                pg_app.build(TaskSpec(name="it.once", args={"marks": "/x", "key": f"l{i}"}))
                for i in range(COPY_FROM + 5)
            ]
            done = enqueue_in_transaction_sync(conn, large, schema=schema)  # through COPY
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (2,)
    assert [e.id for e in done] == [t.id for t in large] and all(e.created for e in done)
    stored = await pg_app.list_tasks_async(limit=500)
    assert {t.id for t in stored.items} == {t.id for t in large}


async def test_a_sync_autocommit_connection_commits_the_submit_itself(pg_app: Conveyor) -> None:
    with _connect_sync(pg_app, autocommit=True) as conn:
        (handle,) = submit_in_transaction_sync(
            pg_app, conn, [TaskSpec(name="it.once", args={"marks": "/x", "key": "ac"})]
        )
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert (await pg_app.get_async(handle.id)).state is State.PENDING
    async with await _connect(pg_app) as aconn:
        with pytest.raises(InvalidInput, match="sync psycopg Connection"):
            submit_in_transaction_sync(pg_app, aconn, [])  # type: ignore[arg-type]
