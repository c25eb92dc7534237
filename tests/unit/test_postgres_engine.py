"""What only the PostgreSQL engine has: its URL, migrations under an advisory lock,
index-only claims, settling a shared child when its parents finish at once, large
submits through COPY, and a listener opened only by processes that claim or wait.

The contract suite checks the engine's behaviour; these check its PostgreSQL side,
on the real server (``tests/services.py``), each in a schema of its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from conveyor.backends import SCHEMES
from conveyor.backends import postgres_ops as ops
from conveyor.backends.base import ClaimParams, EnqueueParams, WaitParams
from conveyor.backends.postgres import PgUrl, PostgresBackend, _wait_state
from conveyor.backends.postgres_ops import COPY_FROM, shaped_sql
from conveyor.backends.postgres_tx import enqueue_in_transaction
from conveyor.errors import BackendUnavailable, InvalidInput, TaskExists
from conveyor.ids import new_id
from conveyor.models import NewTask
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


async def test_repeated_claims_run_one_cached_plan(open_pg: Opener) -> None:
    """Planning a claim costs as much as running it: after PostgreSQL's five trial
    custom plans, the claims of a worker (same queues, same batch size) and its checks
    before sleeping reuse the generic plan instead of planning each one afresh."""
    backend = await open_pg()
    assert backend._pool is not None
    await backend.task_enqueue_many(EnqueueParams([new_task(queue=q) for q in ("a", "b") for _ in range(50)]))
    async with backend._pool.connection() as conn:
        await conn.execute("DEALLOCATE ALL")
        for queues in (("a",), ("a", "b")):
            for _ in range(20):
                claim = await ops.claim(conn, ClaimParams("w", 2, 30.0, queues))
                assert len(claim.tasks) == 2
                assert await _wait_state(conn, list(queues)) == (None, True)
            for statement in ("claim_queues", "wait_queues"):
                cur = await conn.execute(
                    "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE %s",
                    [f"%{statement}(name)%"],
                )
                generic, custom = await cur.fetchone() or (0, 0)
                assert generic >= 5 and custom <= 5, (statement, queues, generic, custom)
            await conn.execute("DEALLOCATE ALL")


async def test_claims_read_the_ready_index_only_even_with_stale_statistics(open_pg: Opener) -> None:
    backend = await open_pg()
    assert backend._pool is not None
    async with backend._pool.connection() as conn:
        await conn.execute("ANALYZE tasks")  # statistics of an empty table...
    for _ in range(20):  # ...then a backlog that grew faster than autovacuum analyzes
        await backend.task_enqueue_many(EnqueueParams([new_task(priority=2) for _ in range(1000)]))
    async with backend._pool.connection() as conn:
        now = time.time()
        args = {"now": now, "expires": now + 30, "worker_id": "w", "tags": "[]", "q0": "default"}
        # The plan a claim runs is usually the cached generic one (postgres_ops.shaped_sql):
        # it must walk the index as well as a plan made for the values at hand.
        for analyzed, mode in itertools.product((False, True), ("force_custom_plan", "force_generic_plan")):
            if analyzed:
                await conn.execute("ANALYZE tasks")
            await conn.execute(sql.SQL("SET plan_cache_mode = {}").format(sql.Identifier(mode)))
            for query in ("claim_queues", "claim_all"):
                statement = shaped_sql(query, 10, 1)
                await (await conn.execute(statement, args, prepare=True)).fetchall()
                cur = await conn.execute(
                    "SELECT name, parameter_types::text[] FROM pg_prepared_statements ORDER BY prepare_time DESC"
                )
                name, types = await cur.fetchone() or ("?", [])
                names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", statement.as_string(conn))))  # $1, $2, ...
                values = sql.SQL(", ").join(
                    sql.SQL("{}::{}").format(sql.Literal(args[k]), sql.SQL(t))
                    for k, t in zip(names, types, strict=True)
                )
                cur = await conn.execute(sql.SQL("EXPLAIN EXECUTE {} ({})").format(sql.Identifier(name), values))
                plan = "\n".join(row[0] for row in await cur.fetchall())
                assert "Index Scan using tasks_ready on tasks" in plan, plan
                assert "Seq Scan on tasks" not in plan and "Bitmap Heap Scan on tasks t" not in plan, plan
                assert "Sort Key: t.priority" not in plan, plan
            await conn.execute("DEALLOCATE ALL")


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


def _assorted(count: int) -> list[NewTask]:
    """Tasks of every kind a submit stores: delayed, keyed, labelled, awkward text,
    timeouts, and every tenth one waiting on the task before it."""
    now = time.time()
    tasks: list[NewTask] = []
    for i in range(count):
        tasks.append(
            new_task(
                name=f"t.{i % 3}",
                args={"i": i, "text": 'tab\t newline\n backslash\\ quote" é \u2603'},
                labels=["a\tb", "c\\d"] if i % 2 else [],
                run_at=now + 60 if i % 5 == 0 else now,
                created_at=now,
                idempotency_key=f"key\t{i}" if i % 7 == 0 else None,
                timeout=1.5 if i % 4 else None,
                depends_on=[tasks[-1].id] if i % 10 == 9 else [],
            )
        )
    return tasks


def _renamed(tasks: list[NewTask], queue: str) -> list[NewTask]:
    ids = {t.id: new_id() for t in tasks}
    return [dataclasses.replace(t, id=ids[t.id], queue=queue, depends_on=[ids[d] for d in t.depends_on]) for t in tasks]


async def test_a_large_submit_goes_through_copy_and_stores_what_small_ones_store(open_pg: Opener) -> None:
    backend = await open_pg()
    template = _assorted(3 * COPY_FROM)
    big, small = _renamed(template, "big"), _renamed(template, "small")
    stored_big = await backend.task_enqueue_many(EnqueueParams(big))
    stored_small = []
    for start in range(0, len(small), 10):  # below COPY_FROM: one statement each
        stored_small += await backend.task_enqueue_many(EnqueueParams(small[start : start + 10]))
    assert [(e.state, e.created) for e in stored_big] == [(e.state, e.created) for e in stored_small]
    assert {e.state for e in stored_big} == {State.PENDING, State.SCHEDULED, State.WAITING}
    skip = {"id", "queue", "depends_on"}
    for a, b in zip(big, small, strict=True):
        one, two = await backend.task_get(a.id), await backend.task_get(b.id)
        assert one.model_dump(exclude=skip) == two.model_dump(exclude=skip)
        assert one.depends_on == a.depends_on and one.history[0].at == one.updated_at
    # a repeat of the keyed tasks is recognized, through COPY too
    again = await backend.task_enqueue_many(EnqueueParams(_renamed(template, "big")))
    assert [e.created for e in again] == [i % 7 != 0 for i in range(len(template))]


async def test_a_refused_large_submit_stores_nothing(open_pg: Opener) -> None:
    backend = await open_pg()
    first = [new_task(queue="dup") for _ in range(COPY_FROM)]
    await backend.task_enqueue_many(EnqueueParams(first))
    clash = [new_task(queue="dup") for _ in range(COPY_FROM)] + [first[0]]
    with pytest.raises(TaskExists):
        await backend.task_enqueue_many(EnqueueParams(clash))
    nul = [new_task(queue="dup") for _ in range(COPY_FROM)] + [new_task(queue="dup", name="bad\x00name")]
    with pytest.raises(InvalidInput):
        await backend.task_enqueue_many(EnqueueParams(nul))
    nul_args = [new_task(queue="dup") for _ in range(COPY_FROM)] + [new_task(queue="dup", args={"s": "\x00"})]
    with pytest.raises(InvalidInput):
        await backend.task_enqueue_many(EnqueueParams(nul_args))
    unjson = [new_task(queue="dup") for _ in range(COPY_FROM)] + [new_task(queue="dup", args={"o": object()})]
    with pytest.raises(InvalidInput):  # found while the COPY streams: it is undone
        await backend.task_enqueue_many(EnqueueParams(unjson))
    assert backend._pool is not None
    async with backend._pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM tasks WHERE queue = 'dup'")
        assert await cur.fetchone() == (COPY_FROM,)


async def test_only_a_claim_or_a_wait_opens_the_listener_and_copy_wakes_it(open_pg: Opener) -> None:
    submitter, worker = await open_pg(), await open_pg()
    await submitter.task_enqueue_many(EnqueueParams([new_task(queue="other")]))
    assert not submitter._listener.listening and not worker._listener.listening
    await worker.task_claim(ClaimParams(worker_id="w", limit=1, lease_seconds=30.0, queues=("woken",)))
    assert worker._listener.listening
    waiting = asyncio.create_task(worker.task_wait(WaitParams(("woken",), 20.0)))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await submitter.task_enqueue_many(EnqueueParams([new_task(queue="woken") for _ in range(COPY_FROM)]))
    await asyncio.wait_for(waiting, 10)
    assert time.monotonic() - started < 5
    assert not submitter._listener.listening


async def test_a_large_submit_in_the_callers_transaction_lives_and_dies_with_it(open_pg: Opener) -> None:
    backend = await open_pg()
    assert backend._pool is not None
    schema = backend.pg.schema
    async with backend._pool.connection() as conn:
        async with conn.transaction(force_rollback=True):
            await enqueue_in_transaction(conn, [new_task(queue="tx") for _ in range(COPY_FROM)], schema=schema)
        taken = [new_task(queue="tx") for _ in range(COPY_FROM)]
        async with conn.transaction():
            await enqueue_in_transaction(conn, taken, schema=schema)
            with pytest.raises(TaskExists):  # refused to a savepoint: the transaction goes on
                await enqueue_in_transaction(conn, [new_task(queue="tx"), *taken], schema=schema)
            await enqueue_in_transaction(conn, [new_task(queue="tx") for _ in range(COPY_FROM)], schema=schema)
        cur = await conn.execute(sql.SQL("SELECT count(*) FROM {}.tasks").format(sql.Identifier(schema)))
        assert await cur.fetchone() == (2 * COPY_FROM,)


async def test_the_count_table_matches_the_tasks_after_every_kind_of_write(open_pg: Opener) -> None:
    from conveyor.backends.base import ReapParams, TaskFilter
    from conveyor.states import FailureReason
    from tests.contract.helpers import claim, fail

    one, two = await open_pg(), await open_pg()

    async def check() -> None:
        assert one._pool is not None
        async with one._pool.connection() as conn:
            kept = await (
                await conn.execute("SELECT queue, state, priority, sum(n)::int FROM task_counts "
                                   "GROUP BY 1, 2, 3 HAVING sum(n) <> 0 ORDER BY 1, 2, 3")
            ).fetchall()  # fmt: skip
            real = await (
                await conn.execute(
                    "SELECT queue, state, priority, count(*)::int FROM tasks GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
                )
            ).fetchall()
        assert kept == real

    await one.task_enqueue_many(EnqueueParams([new_task(priority=p % 11) for p in range(COPY_FROM + 10)]))  # COPY
    await two.task_enqueue_many(EnqueueParams([new_task(queue="b", delay=3600), new_task(queue="b")]))
    await check()
    claimed = await claim(one, 30)
    more = await claim(two, 5, lease_seconds=1, now=time.time() - 10)
    await asyncio.gather(
        one.task_finish_many([complete(c) for c in claimed[:20]]),
        two.task_finish_many([fail(c, FailureReason.PERMANENT_ERROR) for c in claimed[20:]]),
    )
    await two.task_reap_expired(ReapParams())
    await check()
    await one.task_replay(TaskFilter(state=State.FAILED))
    await two.task_purge(TaskFilter(state=State.SUCCEEDED))
    await check()
    stats = await one.stats()
    assert sum(stats.counts.values()) == COPY_FROM + 12 and len(more) == 5  # purge takes dead letters only


def test_a_connection_check_works_on_descriptors_past_1023() -> None:
    """``select`` refuses descriptors from 1024 on: every pooled connection of a process
    with many sockets open would have looked dead to the check before each call."""
    import os
    import resource
    import socket

    from conveyor.backends.postgres import _readable

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft <= 1500:
        pytest.skip(f"the open-files limit ({soft}) leaves no descriptor past 1023 to test with")
    a, b = socket.socketpair()
    high = os.dup2(a.fileno(), 1500)
    try:
        assert _readable(high) is False
        b.send(b"x")
        assert _readable(high) is True
    finally:
        os.close(high)
        a.close()
        b.close()
