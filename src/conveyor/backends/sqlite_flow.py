"""The SQLite engine's flow control: the ``flow_controls`` table inside claims and outcomes.

Every function takes the cursor of a transaction ``sqlite_ops`` already opened
(``BEGIN IMMEDIATE`` for claims and outcomes), so the limits are read, spent and
written back in the same atomic step as the claim itself; the rules are
``conveyor.features.flow``'s. A claim first reads the (small) table: when it is empty
and aging is off, ``sqlite_ops`` takes its plain one-statement path.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Sequence
from typing import Any

from conveyor.backends.base import ClaimParams, Outcome
from conveyor.backends.codec import dump, dump_list
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

Q = load_queries("sqlite")


def control_from_row(row: Sequence[Any]) -> FlowControl:
    return FlowControl(
        kind=row[0],
        name=row[1],
        paused=bool(row[2]),
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


def load_controls(cur: sqlite3.Cursor) -> dict[Key, FlowControl]:
    return {(c.kind, c.name): c for c in map(control_from_row, cur.execute(Q["flow_all"]).fetchall())}


def save_state(cur: sqlite3.Cursor, changed: Sequence[FlowControl]) -> None:
    rows = [(c.tokens, c.refilled_at, c.failures, c.breaker.value, c.opened_until, c.kind, c.name) for c in changed]
    if rows:
        cur.executemany(Q["flow_save_state"], rows)


def load_for_claim(cur: sqlite3.Cursor) -> tuple[dict[Key, FlowControl], dict[Key, int]]:
    """The controls and the running counts the gate needs, in one query (usually no rows)."""
    controls: dict[Key, FlowControl] = {}
    running: dict[Key, int] = {}
    for row in cur.execute(Q["flow_claim"]).fetchall():
        c = control_from_row(row)
        controls[c.key] = c
        running[c.key] = row[12]
    return controls, running


def claim_controlled(
    cur: sqlite3.Cursor,
    p: ClaimParams,
    now: float,
    loaded: tuple[dict[Key, FlowControl], dict[Key, int]],
    args: dict[str, Any],
) -> tuple[list[Any], float | None]:
    """Lease up to ``p.limit`` tasks the gate admits; returns the RETURNING rows and
    when a blocked key may allow more (``None``: nothing is waiting on time).

    Each round fetches the heads of the open queues (per priority level with aging),
    skipping blocked names, and offers them to the gate in claim order; it stops when
    the batch is full, nothing is left, or a round neither took a task nor blocked a key.
    """
    gate = ClaimGate(loaded[0], loaded[1], now)
    if not p.aging_interval and gate.ample(p.limit):
        rows = claim_plain(cur, p, args)
        for (queue, name), count in Counter((row[3], row[1]) for row in rows).items():
            gate.take(queue, name, count)  # spend the budgets; none can refuse (see ClaimGate.ample)
        save_state(cur, gate.commit())
        return rows, gate.wake
    queues = list(p.queues) or [row[0] for row in cur.execute(Q["ready_queues"])]
    query = Q["flow_candidates_aged"] if p.aging_interval else Q["flow_candidates"]
    levels = dump(AGING_LEVELS)
    tags = dump_list(p.tags)
    rows = []
    while len(rows) < p.limit:
        open_queues = [q for q in queues if q not in gate.blocked_queues]
        if not open_queues:
            break
        need = p.limit - len(rows)
        fetch = {"queues": dump(open_queues), "levels": levels, "tags": tags, "limit": need}
        found = cur.execute(query, fetch | {"blocked": dump(sorted(gate.blocked_names))}).fetchall()
        if not found:
            break
        if p.aging_interval:
            found.sort(key=lambda c: claim_key(c[3], c[4], c[0], now, p.aging_interval))
        elif len(open_queues) > 1:
            found.sort(key=lambda c: (-c[3], c[4], c[0]))
        before = len(gate.blocked_queues) + len(gate.blocked_names)
        ids: list[str] = []
        for c in found:
            if len(ids) >= need:
                break
            if gate.take(c[2], c[1]):
                ids.append(c[0])
        if ids:
            rows += cur.execute(Q["claim_ids"], args | {"ids": dump(ids)}).fetchall()
        newly_blocked = len(gate.blocked_queues) + len(gate.blocked_names) > before
        if not newly_blocked and (not ids or len(found) < need):
            break
    save_state(cur, gate.commit())
    return rows, gate.wake


def claim_plain(cur: sqlite3.Cursor, p: ClaimParams, args: dict[str, Any]) -> list[Any]:
    """The one-statement claim (no gate): the RETURNING rows of ``claim_queues``/``claim_all``."""
    if p.queues:
        return cur.execute(Q["claim_queues"], args | {"queues": dump(list(p.queues))}).fetchall()
    return cur.execute(Q["claim_all"], args).fetchall()


def record_breakers(cur: sqlite3.Cursor, outcomes: Sequence[Outcome], applied: Sequence[bool], now: float) -> None:
    """Update the breakers of the task names of the applied outcomes (same transaction)."""
    breakers = {c.name: c for c in map(control_from_row, cur.execute(Q["flow_breakers"]).fetchall())}
    if not breakers:
        return
    done = [o for o, ok in zip(outcomes, applied, strict=True) if ok]
    names = dict(cur.execute(Q["task_names"], {"ids": dump([o.task_id for o in done])}).fetchall())
    changed: dict[str, FlowControl] = {}
    for o in done:
        c = breakers.get(names.get(o.task_id, ""))
        if c is not None and record_outcome(c, o.kind == "complete", now):
            changed[c.name] = c
    save_state(cur, list(changed.values()))


def queue_update(cur: sqlite3.Cursor, update: QueueUpdate) -> FlowControl:
    row = cur.execute(Q["flow_get"], {"kind": update.kind, "name": update.name}).fetchone()
    control = apply_update(None if row is None else control_from_row(row), update)
    if control.inert:
        cur.execute(Q["flow_delete"], {"kind": control.kind, "name": control.name})
    else:
        values = control.model_dump(mode="json", exclude={"kind", "name"})
        cur.execute(Q["flow_upsert"], values | {"kind": control.kind, "name": control.name})
    return control
