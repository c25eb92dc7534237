"""Transactional enqueue: submit tasks inside the caller's own psycopg transaction.

A task written this way exists if and only if the caller's transaction commits, so
"save the order, then send the e-mail" needs no outbox::

    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        async with conn.transaction():
            await conn.execute("INSERT INTO orders ...")
            await submit_in_transaction(app, conn, [TaskSpec(name="email.send", args={...})])
        # committed: the task is stored and workers are woken; rolled back: nothing

The tasks are built exactly as ``app.submit`` builds them (priority rules, task
defaults, ``max_length``), and stored by the same code as the engine's own submits,
on the caller's connection. The engine's objects are found through the schema of the
app's URL; the caller's ``search_path`` is switched only for these statements and
restored before returning. Workers are woken by ``pg_notify``, which PostgreSQL
delivers at commit.

Sync code (Django, Flask, SQLAlchemy on psycopg) has the same with a sync
``psycopg.Connection``: ``submit_in_transaction_sync`` and
``enqueue_in_transaction_sync``. They run the very same code: the async operations
get the sync connection behind their async methods (``_SyncConn``), where every
``await`` is done the moment it starts, so the whole coroutine completes in its
first step, in the caller's thread, with no event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar, cast

from psycopg import AsyncConnection, Connection, Copy, Cursor
from psycopg.pq import TransactionStatus

from conveyor.backends import postgres_admin, postgres_ops
from conveyor.backends.base import Enqueued, EnqueueParams
from conveyor.backends.postgres import PgUrl
from conveyor.errors import InvalidInput
from conveyor.models import NewTask, TaskSpec

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.task import TaskHandle


async def enqueue_in_transaction(
    conn: AsyncConnection[Any],
    tasks: Sequence[NewTask],
    *,
    schema: str = "conveyor",
    max_length: dict[str, int] | None = None,
) -> list[Enqueued]:
    """Store ``tasks`` (built with ``Conveyor.build``) on ``conn``, in its current
    transaction; opens one (committed on return) if ``conn`` is in autocommit mode
    and idle. ``schema`` is the engine's (the ``schema`` option of its URL)."""
    pg = PgUrl(f"postgresql:///?schema={schema}")
    params = EnqueueParams(tasks=list(tasks), max_length=dict(max_length or {}))
    return await _in_own_or_new_transaction(conn, params, pg, stored_bounds=False)


async def submit_in_transaction(
    app: Conveyor, conn: AsyncConnection[Any], specs: Sequence[TaskSpec]
) -> list[TaskHandle]:
    """Build ``specs`` as ``app`` would submit them and store them in ``conn``'s
    transaction; returns their handles (usable once the transaction has committed).
    Queue bounds are config's, overridden by those set at run time (read on ``conn``)."""
    from conveyor.task import TaskHandle

    url = app.settings.url
    if not url.lower().startswith(("postgresql:", "postgres:")):
        raise InvalidInput(f"transactional enqueue needs a PostgreSQL app URL, not {url!r}")
    new = [app.build(spec) for spec in specs]
    pg = PgUrl(url)
    params = EnqueueParams(tasks=new, max_length=app.settings.max_lengths())
    done = await _in_own_or_new_transaction(conn, params, pg, stored_bounds=True)
    return [TaskHandle(app, e.id, created=e.created) for e in done]


def enqueue_in_transaction_sync(
    conn: Connection[Any],
    tasks: Sequence[NewTask],
    *,
    schema: str = "conveyor",
    max_length: dict[str, int] | None = None,
) -> list[Enqueued]:
    """``enqueue_in_transaction`` on a sync psycopg connection."""
    return _complete(enqueue_in_transaction(_SyncConn.over(conn), tasks, schema=schema, max_length=max_length))


def submit_in_transaction_sync(app: Conveyor, conn: Connection[Any], specs: Sequence[TaskSpec]) -> list[TaskHandle]:
    """``submit_in_transaction`` on a sync psycopg connection."""
    return _complete(submit_in_transaction(app, _SyncConn.over(conn), specs))


def _in_transaction(conn: AsyncConnection[Any]) -> bool:
    return conn.info.transaction_status != TransactionStatus.IDLE


async def _in_own_or_new_transaction(
    conn: AsyncConnection[Any], params: EnqueueParams, pg: PgUrl, *, stored_bounds: bool
) -> list[Enqueued]:
    if conn.autocommit and not _in_transaction(conn):
        async with conn.transaction():
            return await _enqueue(conn, params, pg, stored_bounds)
    return await _enqueue(conn, params, pg, stored_bounds)


async def _enqueue(conn: AsyncConnection[Any], params: EnqueueParams, pg: PgUrl, stored_bounds: bool) -> list[Enqueued]:
    cur = await conn.execute("SELECT current_setting('search_path')")
    row = await cur.fetchone()
    previous = "" if row is None else str(row[0])
    await conn.execute("SELECT set_config('search_path', %s, true)", [pg.schema])
    try:
        if stored_bounds:
            stored = await postgres_admin.queue_bounds(conn)
            params = EnqueueParams(params.tasks, {**params.max_length, **stored})
        return await postgres_ops.enqueue(conn, params, pg.channel)
    finally:
        if not conn.closed and conn.info.transaction_status == TransactionStatus.INTRANS:
            await conn.execute("SELECT set_config('search_path', %s, true)", [previous])


# --- the sync connection behind the async methods ---------------------------------------

R = TypeVar("R")


def _complete(coro: Coroutine[Any, Any, R]) -> R:
    """Run a coroutine whose awaits all complete at once (see the module docstring)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return cast(R, done.value)
    coro.close()
    raise RuntimeError("a sync transactional enqueue waited for something: it must not")  # a bug here


class _SyncConn:
    """The methods the enqueue code calls on an ``AsyncConnection``, done at once on a
    sync ``Connection``."""

    def __init__(self, conn: Connection[Any]) -> None:
        self._conn = conn

    @classmethod
    def over(cls, conn: Connection[Any]) -> AsyncConnection[Any]:
        if not isinstance(conn, Connection):
            raise InvalidInput(f"expected a sync psycopg Connection, got {type(conn).__name__}")
        return cast(AsyncConnection[Any], cls(conn))  # quacks like one, for the calls made here

    @property
    def autocommit(self) -> bool:
        return self._conn.autocommit

    @property
    def closed(self) -> bool:
        return self._conn.closed

    @property
    def info(self) -> Any:
        return self._conn.info

    async def execute(self, query: Any, params: Any = None) -> _SyncCursor:
        return _SyncCursor(self._conn.execute(query, params))

    def cursor(self) -> _SyncCursor:
        return _SyncCursor(self._conn.cursor())

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        with self._conn.transaction():
            yield


class _SyncCursor:
    def __init__(self, cur: Cursor[Any]) -> None:
        self._cur = cur

    async def execute(self, query: Any, params: Any = None) -> _SyncCursor:
        self._cur.execute(query, params)
        return self

    async def fetchone(self) -> Any:
        return self._cur.fetchone()

    async def fetchall(self) -> list[Any]:
        return self._cur.fetchall()

    @asynccontextmanager
    async def copy(self, statement: Any) -> AsyncIterator[_SyncCopy]:
        with self._cur.copy(statement) as copy:
            yield _SyncCopy(copy)


class _SyncCopy:
    def __init__(self, copy: Copy) -> None:
        self._copy = copy

    def set_types(self, types: Sequence[Any]) -> None:
        self._copy.set_types(types)

    async def write_row(self, row: Sequence[Any]) -> None:
        self._copy.write_row(row)
