"""The PostgreSQL engine's flow control: ``flow_controls`` inside claims and outcomes.

The rules are ``conveyor.features.flow``'s; this module only stores and loads them.
A claim that finds controls takes ``flow_lock`` (``SELECT … FOR UPDATE`` on every
control row) before it reads them and counts running tasks, so flow-controlled claims
run one at a time cluster-wide and each sees what the previous one spent and leased.
With no rows stored, the plain claim in ``postgres_ops`` never comes here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import AsyncCursor

from conveyor.backends.base import ClaimParams, Outcome
from conveyor.backends.codec import dump
from conveyor.backends.sqlfiles import load_queries
from conveyor.features.flow import (
    AGING_LEVELS,
    BreakerState,
    ClaimGate,
    FlowControl,
    Key,
    QueueUpdate,
    apply_update,
    claim_key,
    record_outcome,
)

Q = load_queries("postgres")
Cursor = AsyncCursor[Any]


def control_from_row(row: Sequence[Any]) -> FlowControl:
    return FlowControl(
        kind=row[0],
        name=row[1],
        paused=row[2],
        rate_limit=row[3],
        concurrency=row[4],
        breaker_threshold=row[5],
        breaker_cooldown=row[6],
        tokens=row[7],
        refilled_at=row[8],
        failures=row[9],
        breaker=BreakerState(row[10]),
        opened_until=row[11],
    )


async def load_controls(cur: Cursor) -> list[FlowControl]:
    await cur.execute(Q["flow_all"])
    return [control_from_row(row) for row in await cur.fetchall()]


async def save_state(cur: Cursor, changed: Sequence[FlowControl]) -> None:
    if changed:
        rows = [
            {
                "kind": c.kind,
                "name": c.name,
                "tokens": c.tokens,
                "refilled_at": c.refilled_at,
                "failures": c.failures,
                "breaker": c.breaker.value,
                "opened_until": c.opened_until,
            }
            for c in changed
        ]
        await cur.execute(Q["flow_save_state"], {"rows": dump(rows)})


async def claim_controlled(
    cur: Cursor, p: ClaimParams, now: float, args: dict[str, Any]
) -> tuple[list[Any], float | None]:
    """Lease up to ``p.limit`` tasks the gate admits (inside the caller's transaction);
    returns the claim's rows and when a blocked key may allow more.

    Each round fetches the heads of the open queues (per priority level with aging),
    skipping blocked names, and offers them to the gate in claim order; it stops when
    the batch is full, nothing is left, or a round neither took a task nor blocked a key.
    """
    await cur.execute(Q["flow_lock"])
    await cur.execute(Q["flow_claim"])
    controls: dict[Key, FlowControl] = {}
    running: dict[Key, int] = {}
    for row in await cur.fetchall():
        c = control_from_row(row)
        controls[c.key] = c
        running[c.key] = row[12]
    gate = ClaimGate(controls, running, now)
    queues = list(p.queues)
    if not queues:
        await cur.execute(Q["ready_queues"])
        queues = [row[0] for row in await cur.fetchall()]
    query = Q["flow_candidates_aged"] if p.aging_interval else Q["flow_candidates"]
    rows: list[Any] = []
    while len(rows) < p.limit:
        open_queues = [q for q in queues if q not in gate.blocked_queues]
        if not open_queues:
            break
        need = p.limit - len(rows)
        fetch = {"queues": open_queues, "levels": AGING_LEVELS, "tags": args["tags"], "limit": need}
        await cur.execute(query, fetch | {"blocked": sorted(gate.blocked_names)})
        found = await cur.fetchall()
        if not found:
            break
        found.sort(key=lambda c: claim_key(c[3], c[4], c[0], now, p.aging_interval))
        before = len(gate.blocked_queues) + len(gate.blocked_names)
        ids: list[str] = []
        for c in found:
            if len(ids) >= need:
                break
            if gate.take(c[2], c[1]):
                ids.append(c[0])
        if ids:
            await cur.execute(Q["claim_ids"], args | {"ids": ids})
            rows += await cur.fetchall()
        newly_blocked = len(gate.blocked_queues) + len(gate.blocked_names) > before
        if not newly_blocked and (not ids or len(found) < need):
            break
    await save_state(cur, gate.commit())
    return rows, gate.wake


async def record_breakers(cur: Cursor, done: Sequence[tuple[Outcome, str]], now: float) -> None:
    """Update the breakers of the task names of applied outcomes ``(outcome, name)``
    (same transaction; the breaker rows are locked until it ends)."""
    names = sorted({name for _, name in done})
    if not names:
        return
    await cur.execute(Q["flow_breakers"], {"names": names})
    breakers = {c.name: c for c in map(control_from_row, await cur.fetchall())}
    if not breakers:
        return
    changed: dict[str, FlowControl] = {}
    for o, name in done:
        c = breakers.get(name)
        if c is not None and record_outcome(c, o.kind == "complete", now):
            changed[c.name] = c
    await save_state(cur, list(changed.values()))


async def queue_update(cur: Cursor, update: QueueUpdate) -> FlowControl:
    """Apply ``update`` to the stored control (row-locked), deleting it when inert."""
    await cur.execute(Q["flow_get"], {"kind": update.kind, "name": update.name})
    row = await cur.fetchone()
    control = apply_update(None if row is None else control_from_row(row), update)
    if control.inert:
        await cur.execute(Q["flow_delete"], {"kind": control.kind, "name": control.name})
    else:
        values = control.model_dump(mode="json", exclude={"kind", "name"})
        await cur.execute(Q["flow_upsert"], values | {"kind": control.kind, "name": control.name})
    return control
