"""The PostgreSQL engine's outbox (``OutboxStore``): migration 0002's row trigger
records events; these subscribe (creating or dropping the trigger), lease, drop and
reschedule them. Off the hot path: one statement per call, in autocommit, except
``subscribe``, whose set and trigger change together."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from conveyor.backends.base import OutboxClaimParams, OutboxEvent, OutboxSettle
from conveyor.backends.codec import outbox_event

Conn = AsyncConnection[Any]

# Fires only on moves into a final-ish state; the function checks the subscriptions.
_CREATE_TRIGGER = """
CREATE OR REPLACE TRIGGER outbox_record AFTER UPDATE OF state ON tasks FOR EACH ROW
WHEN (NEW.state IN ('succeeded', 'retrying', 'failed', 'cancelled') AND OLD.state IS DISTINCT FROM NEW.state)
EXECUTE FUNCTION outbox_record()
"""
_DROP_TRIGGER = "DROP TRIGGER IF EXISTS outbox_record ON tasks"

_CLAIM = """
UPDATE outbox SET next_at = %(until)s, deliveries = deliveries + 1
WHERE id IN (SELECT id FROM outbox WHERE next_at <= %(now)s ORDER BY next_at, id LIMIT %(limit)s
             FOR UPDATE SKIP LOCKED)
RETURNING id, event, task_id, workflow_id, queue, name, state, attempt, at, deliveries, done, result, error
"""


async def subscribe(conn: Conn, events: frozenset[str]) -> None:
    async with conn.transaction():  # workers starting together take turns
        await conn.execute("LOCK TABLE outbox_subscriptions IN SHARE ROW EXCLUSIVE MODE")
        await conn.execute("DELETE FROM outbox_subscriptions")
        if events:
            async with conn.cursor() as cur:
                await cur.executemany("INSERT INTO outbox_subscriptions (event) VALUES (%s)", [(e,) for e in events])
        current = await (await conn.execute("SELECT 1 FROM pg_trigger WHERE tgname = 'outbox_record' "
                                            "AND tgrelid = 'tasks'::regclass")).fetchone()  # fmt: skip
        if events and current is None:
            await conn.execute(_CREATE_TRIGGER)
        elif not events and current is not None:
            await conn.execute(_DROP_TRIGGER)


async def claim(conn: Conn, params: OutboxClaimParams) -> list[OutboxEvent]:
    now = time.time() if params.now is None else params.now
    cur = await conn.execute(_CLAIM, {"now": now, "until": now + params.lease_seconds, "limit": params.limit})
    return sorted((outbox_event(row) for row in await cur.fetchall()), key=lambda e: e.id)


async def settle(conn: Conn, settles: Sequence[OutboxSettle]) -> None:
    drop = [int(s.id) for s in settles if s.retry_at is None]
    again = [s for s in settles if s.retry_at is not None]
    async with conn.transaction():
        if drop:
            await conn.execute("DELETE FROM outbox WHERE id = ANY(%s)", [drop])
        if again:
            async with conn.cursor() as cur:
                await cur.executemany(
                    "UPDATE outbox SET next_at = %s, done = %s WHERE id = %s",
                    [(s.retry_at, Jsonb(list(s.done)), int(s.id)) for s in again],
                )


async def size(conn: Conn) -> int:
    row = await (await conn.execute("SELECT count(*) FROM outbox")).fetchone()
    return int(row[0]) if row else 0
