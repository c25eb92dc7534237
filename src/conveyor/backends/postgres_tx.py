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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus

from conveyor.backends import postgres_ops
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
    if conn.autocommit and not _in_transaction(conn):
        async with conn.transaction():
            return await _enqueue(conn, params, pg)
    return await _enqueue(conn, params, pg)


async def submit_in_transaction(
    app: Conveyor, conn: AsyncConnection[Any], specs: Sequence[TaskSpec]
) -> list[TaskHandle]:
    """Build ``specs`` as ``app`` would submit them and store them in ``conn``'s
    transaction; returns their handles (usable once the transaction has committed)."""
    from conveyor.task import TaskHandle

    url = app.settings.url
    if not url.lower().startswith(("postgresql:", "postgres:")):
        raise InvalidInput(f"transactional enqueue needs a PostgreSQL app URL, not {url!r}")
    new = [app.build(spec) for spec in specs]
    done = await enqueue_in_transaction(conn, new, schema=PgUrl(url).schema, max_length=app.settings.max_lengths())
    return [TaskHandle(app, e.id, created=e.created) for e in done]


def _in_transaction(conn: AsyncConnection[Any]) -> bool:
    return conn.info.transaction_status != TransactionStatus.IDLE


async def _enqueue(conn: AsyncConnection[Any], params: EnqueueParams, pg: PgUrl) -> list[Enqueued]:
    cur = await conn.execute("SELECT current_setting('search_path')")
    row = await cur.fetchone()
    previous = "" if row is None else str(row[0])
    await conn.execute("SELECT set_config('search_path', %s, true)", [pg.schema])
    try:
        return await postgres_ops.enqueue(conn, params, pg.channel)
    finally:
        if not conn.closed and conn.info.transaction_status == TransactionStatus.INTRANS:
            await conn.execute("SELECT set_config('search_path', %s, true)", [previous])
