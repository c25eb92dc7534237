"""What only the PostgreSQL engine has: its URL, migrations under an advisory lock,
index-only claims, and settling a shared child when its parents finish at once.

The contract suite checks the engine's behaviour; these check its PostgreSQL side,
on the real server (``tests/services.py``), each in a schema of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from conveyor.backends import SCHEMES
from conveyor.backends.base import EnqueueParams
from conveyor.backends.postgres import PgUrl, PostgresBackend
from conveyor.backends.postgres_ops import claim_sql
from conveyor.errors import BackendUnavailable, InvalidInput
from conveyor.states import State
from tests.contract.helpers import claim_one, complete, format_url, new_task, submit
from tests.services import drop_store, postgres_url

Opener = Callable[..., Coroutine[Any, Any, PostgresBackend]]


def test_url_defaults_and_options() -> None:
    pg = PgUrl("postgres://app:secret@db.example:6543/jobs?sslmode=require")
    assert (pg.schema, pg.pool_min, pg.pool_max, pg.auto_migrate, pg.commit) == ("conveyor", 1, 8, True, "submits")
    assert pg.conninfo == "postgresql://app:secret@db.example:6543/jobs?sslmode=require"
    pg = PgUrl("postgresql://h/db?schema=q1&pool_max=20&auto_migrate=false&commit=durable&prepare=false")
    assert (pg.schema, pg.pool_max, pg.auto_migrate, pg.session_commit) == ("q1", 20, False, "on")
    assert pg.conninfo == "postgresql://h/db" and "prepare_threshold" in pg.connect_kwargs()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://h/db?schema=Bad-Name",
        "postgresql://h/db?schema=x;drop",
        "postgresql://h/db?pool_max=zero",
        "postgresql://h/db?commit=sometimes",
        "mysql://h/db",
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidInput):
        PgUrl(url)


async def test_an_unreachable_server_fails_fast_with_one_clear_line() -> None:
    backend = PostgresBackend("postgresql://127.0.0.1:9/nowhere?connect_timeout=1")
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as refused:
        await backend.open()
    assert time.monotonic() - started < 5
    assert "\n" not in str(refused.value) and "127.0.0.1:9/nowhere" in str(refused.value)


@pytest.fixture
async def open_pg(tmp_path: Path) -> AsyncIterator[Opener]:
    if "postgresql" not in SCHEMES or (template := postgres_url()) is None:
        pytest.skip("no PostgreSQL engine or server")
    url = format_url(template, str(tmp_path))
    opened: list[PostgresBackend] = []

    async def _open(**kwargs: Any) -> PostgresBackend:
        backend = PostgresBackend(url, **kwargs)
        await backend.open()
        opened.append(backend)
        return backend

    yield _open
    for backend in opened:
        await backend.close()
    drop_store(url)


async def test_concurrent_migrations_apply_each_version_once(open_pg: Opener) -> None:
    backends = [await open_pg(auto_migrate=False) for _ in range(4)]
    applied = await asyncio.gather(*(b.migrate() for b in backends))
    assert sorted(map(len, applied)) == [0, 0, 0, len(max(applied, key=len))]
    assert max(applied, key=len)[0] == "0001_init"
    assert await backends[0].migrate() == []


async def test_claims_read_the_ready_index_only_even_with_stale_statistics(open_pg: Opener) -> None:
    backend = await open_pg()
    assert backend._pool is not None
    async with backend._pool.connection() as conn:
        await conn.execute("ANALYZE tasks")  # statistics of an empty table...
    for _ in range(20):  # ...then a backlog that grew faster than autovacuum analyzes
        await backend.task_enqueue_many(EnqueueParams([new_task(priority=2) for _ in range(1000)]))
    async with backend._pool.connection() as conn:
        now = time.time()
        args = {"now": now, "expires": now + 30, "worker_id": "w", "tags": "[]", "queues": ["default"]}
        for analyzed in (False, True):
            if analyzed:
                await conn.execute("ANALYZE tasks")
            for query in ("claim_queues", "claim_all"):
                cur = await conn.execute(sql.SQL("EXPLAIN ") + claim_sql(query, 10), args)
                plan = "\n".join(row[0] for row in await cur.fetchall())
                assert "Index Scan using tasks_ready on tasks" in plan, plan
                assert "Seq Scan on tasks" not in plan and "Bitmap Heap Scan on tasks t" not in plan, plan
                assert "Sort Key: t.priority" not in plan, plan


async def test_parents_finished_at_once_by_two_workers_release_their_child(open_pg: Opener) -> None:
    one, two = await open_pg(), await open_pg()
    for _ in range(10):
        queue = f"q{time.monotonic_ns()}"
        a = await submit(one, queue=queue)
        b = await submit(one, queue=queue)
        child = await submit(one, queue=queue + "-child", depends_on=[a, b])
        first = await claim_one(one, queues=(queue,))
        second = await claim_one(two, queues=(queue,))
        done = await asyncio.gather(one.task_finish_many([complete(first)]), two.task_finish_many([complete(second)]))
        assert list(done) == [[True], [True]]
        assert (await one.task_get(child)).state is State.PENDING
