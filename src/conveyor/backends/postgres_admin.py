"""The PostgreSQL engine's admin operations: listings, the dead-letter queue, queue
depths, statistics, flow settings and the worker registry. Off the hot path, so these
favour plain SQL over cleverness."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from conveyor import states
from conveyor.backends import postgres_flow
from conveyor.backends.base import PURGED_KEY, REPLAYED_KEY, ListParams, TaskFilter
from conveyor.backends.postgres_rows import restore_rows, task_from_row, worker_from_row, worker_params
from conveyor.backends.sqlfiles import load_queries
from conveyor.errors import TaskNotFound
from conveyor.features.flow import FlowControl, QueueUpdate, open_breakers
from conveyor.models import FINISHED_WINDOW, Page, QueueInfo, Stats, Task, WorkerInfo
from conveyor.priority import band_of
from conveyor.states import State

Q = load_queries("postgres")
Conn = AsyncConnection[Any]
_FAILED = states.target("fail").value
_RUNNABLE = states.sources("claim") | states.sources("due")  # restored there: wake workers


def _filter_args(flt: TaskFilter) -> dict[str, Any]:
    """Named parameters of a ``TaskFilter``; ``None`` matches everything."""
    ids = None if flt.ids is None else list(flt.ids)
    return {"queue": flt.queue, "name": flt.name, "label": flt.label, "ids": ids}


async def queue_bound_set(conn: Conn, queue: str, max_length: int | None) -> None:
    if max_length is None:
        await conn.execute(Q["bound_drop"], (queue,))
    else:
        await conn.execute(Q["bound_set"], (queue, max_length))


async def queue_bounds(conn: Conn) -> dict[str, int]:
    return {queue: int(bound) for queue, bound in await (await conn.execute(Q["bounds"])).fetchall()}


async def metrics_add(conn: Conn, deltas: Sequence[tuple[str, float]]) -> None:
    await conn.execute(Q["metrics_add"], {"keys": [k for k, _ in deltas], "values": [v for _, v in deltas]})


async def metrics_read(conn: Conn) -> dict[str, float]:
    return {key: float(value) for key, value in await (await conn.execute(Q["metrics_read"])).fetchall()}


async def worker_register(conn: Conn, info: WorkerInfo) -> None:
    await conn.execute(Q["worker_upsert"], worker_params(info))


async def worker_deregister(conn: Conn, worker_id: str) -> None:
    await conn.execute(Q["worker_offline"], {"id": worker_id})


async def worker_list(conn: Conn, offline_after: float) -> list[WorkerInfo]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(Q["worker_list"])
    before = time.time() - offline_after
    return [worker_from_row(row, before) for row in await cur.fetchall()]


async def task_list(conn: Conn, p: ListParams) -> Page:
    """Newest first; ``next_cursor`` is the last id when another page follows."""
    limit = max(1, p.limit)
    state = None if p.filter.state is None else State(p.filter.state).value
    args = _filter_args(p.filter) | {"state": state, "cursor": p.cursor, "limit": limit + 1}
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(Q["list_tasks"], args)
    rows = await cur.fetchall()
    items = [task_from_row(row) for row in rows[:limit]]
    return Page(items=items, next_cursor=items[-1].id if len(rows) > limit else None)


async def workflow_get(conn: Conn, workflow_id: str) -> list[Task]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(Q["workflow_tasks"], {"workflow_id": workflow_id})
    return [task_from_row(row) for row in await cur.fetchall()]


async def task_replay(conn: Conn, flt: TaskFilter, channel: str) -> int:
    """Failed tasks back to ``pending`` (a state in ``flt`` is ignored: dead letters only)."""
    async with conn.transaction():
        cur = conn.cursor()
        await cur.execute(Q["make_durable"], {"durable": "on"})
        await cur.execute(Q["replay"], _filter_args(flt) | {"now": time.time()})
        queues = [row[0] for row in await cur.fetchall()]
        if queues:
            await cur.execute(Q["notify_queues"], {"queues": queues, "channel": channel})
            await cur.execute(Q["metrics_add"], {"keys": [REPLAYED_KEY], "values": [len(queues)]})
    return len(queues)


async def task_purge(conn: Conn, flt: TaskFilter) -> int:
    """Delete dead letters and their DAG edges; frees their idempotency keys."""
    async with conn.transaction():
        await conn.execute(Q["make_durable"], {"durable": "on"})
        cur = await conn.execute(Q["purge"], _filter_args(flt))
        row = await cur.fetchone()
        purged = 0 if row is None else int(row[0])
        if purged:
            await conn.execute(Q["metrics_add"], {"keys": [PURGED_KEY], "values": [purged]})
    return purged


async def task_restore(conn: Conn, tasks: Sequence[Task], channel: str) -> int:
    """Exported tasks as they were, in one durable transaction: one INSERT (which the
    counts trigger counts and the outbox trigger, on updates only, ignores), then the
    dependency links of the waiting ones, and a wake-up for queues that gained work."""
    async with conn.transaction():
        cur = conn.cursor()
        await cur.execute(Q["make_durable"], {"durable": "on"})
        await cur.execute(Q["restore_tasks"], {"rows": restore_rows(tasks)})
        added = await cur.fetchall()
        waiting = [task_id for task_id, _, state in added if state == State.WAITING.value]
        if waiting:
            await cur.execute(Q["restore_links"], {"ids": waiting})
        queues = sorted({queue for _, queue, state in added if State(state) in _RUNNABLE})
        if queues:
            await cur.execute(Q["notify_queues"], {"queues": queues, "channel": channel})
    return len(added)


async def queue_list(conn: Conn) -> list[QueueInfo]:
    """Counts per queue and state, ready work per band, paused flags: one snapshot."""
    queues: dict[str, QueueInfo] = {}
    async with conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cur = await conn.execute(Q["queue_counts"])
        for queue, state, count in await cur.fetchall():
            queues.setdefault(queue, QueueInfo.empty(queue)).counts[state] = count
        cur = await conn.execute(Q["queue_ready_priorities"])
        for queue, priority, count in await cur.fetchall():
            queues.setdefault(queue, QueueInfo.empty(queue)).pending_by_band[band_of(priority).value] += count
        for control in await postgres_flow.load_controls(conn.cursor()):
            if control.kind == "queue":
                queues.setdefault(control.name, QueueInfo.empty(control.name)).paused = control.paused
    return [queues[name] for name in sorted(queues)]


async def stats(conn: Conn, offline_after: float) -> Stats:
    now = time.time()
    queues = await queue_list(conn)
    async with conn.transaction():
        # The index: "the last minute" is a sliver of the table, but with bitmap scans
        # off (see PgUrl.connect_kwargs) and statistics taken before anything finished,
        # the planner would scan the whole table (150 ms at a million tasks).
        await conn.execute("SET LOCAL enable_seqscan = off")
        cur = await conn.execute(Q["finished_since"], {"since": now - FINISHED_WINDOW})
        row = await cur.fetchone()
    finished = 0 if row is None else int(row[0])
    breakers = open_breakers(await postgres_flow.load_controls(conn.cursor()))
    return Stats.collect(queues, await worker_list(conn, offline_after), finished, breakers)


async def queue_update(conn: Conn, update: QueueUpdate, channel: str) -> FlowControl:
    """Change one control; waiting workers claim again (a resumed queue, a looser limit)."""
    async with conn.transaction():
        cur = conn.cursor()
        await cur.execute(Q["make_durable"], {"durable": "on"})
        control = await postgres_flow.queue_update(cur, update)
        await cur.execute("SELECT pg_notify(%(channel)s, '')", {"channel": channel})
    return control


async def flow_list(conn: Conn) -> list[FlowControl]:
    return await postgres_flow.load_controls(conn.cursor())


async def task_ahead(conn: Conn, task_id: str) -> int:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(Q["get_task"], {"id": task_id})
    row = await cur.fetchone()
    if row is None:
        raise TaskNotFound(f"task {task_id} not found", task_id=task_id)
    if State(row["state"]) not in states.sources("claim"):
        return 0
    keys = {k: row[k] for k in ("queue", "priority", "run_at", "id")}
    plain = conn.cursor()
    await plain.execute(Q["task_ahead"], keys)
    found = await plain.fetchone()
    return 0 if found is None else int(found[0])
