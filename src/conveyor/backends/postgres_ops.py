"""The PostgreSQL engine's hot path: submit, claim, outcomes, leases, heartbeats.

Connections are in autocommit mode, so a single statement is its own transaction and
costs one round trip; operations of several statements open ``conn.transaction()``.
The common case of each hot operation is one statement:

* submit: ``insert_tasks`` (plus ``pg_notify``; one task: ``insert_one``), or from
  ``COPY_FROM`` tasks on ``copy_tasks`` and ``copied_tasks`` in a transaction;
  idempotency keys, ``max_length`` and dependencies take a transaction with advisory
  locks on the keys and queues;
* claim: ``claim_queues``/``claim_all``, one statement that promotes due tasks,
  leases the best ready ones (``UPDATE … FROM (SELECT … FOR UPDATE SKIP LOCKED)
  RETURNING``) and reads the next due time; with flow controls or aging, then a
  transaction in ``postgres_flow``;
* outcomes: ``finish_fast`` writes a whole batch in one statement unless a task has
  dependents or a breaker, whose outcomes then go through ``finish_slow``'s
  transaction, which settles the dependents and breakers in the same step.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

from psycopg import AsyncConnection, AsyncCursor, DataError, errors, sql
from psycopg.rows import dict_row

from conveyor import states
from conveyor.backends import postgres_flow
from conveyor.backends.base import (
    CancelParams,
    Claim,
    ClaimParams,
    Enqueued,
    EnqueueParams,
    HeartbeatParams,
    Outcome,
    ReapParams,
    ReleaseParams,
    split_repeats,
)
from conveyor.backends.codec import dump
from conveyor.backends.postgres_rows import (
    COPY_TYPES,
    claimed_from_row,
    copy_rows,
    insert_rows,
    lease_rows,
    outcome_rows,
    task_from_row,
)
from conveyor.backends.sqlfiles import load_queries
from conveyor.errors import (
    DependencyNotFound,
    InvalidInput,
    InvalidStateTransition,
    QueueFull,
    TaskExists,
    TaskNotFound,
)
from conveyor.models import ClaimedTask, NewTask, Task
from conveyor.states import State

Q = load_queries("postgres")
Conn = AsyncConnection[Any]
Cursor = AsyncCursor[Any]
_FAILED = states.target("fail").value
_SUCCEEDED = states.target("complete").value
_WAITING = states.sources("deps_succeeded")  # new tasks in these states wake nobody
# From this many tasks a submit streams them with COPY: three more round trips, half
# the server's time per task (see postgres_rows); smaller ones take one statement.
COPY_FROM = 64
# count_unfinished sums one partial index per unfinished state; it must cover them all.
_COUNTED = states.sources("claim") | states.sources("due") | {states.target("claim")} | states.sources("deps_succeeded")
if _COUNTED != states.ACTIVE:
    raise RuntimeError(f"count_unfinished counts {sorted(_COUNTED)}, not every unfinished state")


_shaped: dict[tuple[str, int, int], sql.Composed] = {}


def shaped_sql(name: str, limit: int = 0, queues: int = 0) -> sql.Composed:
    """Query ``name`` with ``{limit}`` as a literal and ``{queues}`` as a VALUES list of
    parameters ``q0``, ``q1``… (``queue_params``). PostgreSQL then knows the batch size
    and how many queues there are, so one cached generic plan serves every call of that
    shape: with a parameter limit it would plan for sorting a whole queue, and with an
    array of queues (unnest) it guesses 10 rows, finds the generic plan dearer than a
    custom one and plans every call afresh, which costs as much as running a claim."""
    key = (name, limit, queues)
    query = _shaped.get(key)
    if query is None:
        if len(_shaped) > 512:
            _shaped.clear()
        rows = sql.SQL(", ").join(sql.SQL("({}::text)").format(sql.Placeholder(f"q{i}")) for i in range(queues))
        query = _shaped[key] = sql.SQL(Q[name]).format(limit=sql.Literal(limit), queues=rows)
    return query


def queue_params(queues: Sequence[str]) -> dict[str, str]:
    """The parameters of ``shaped_sql``'s ``{queues}``."""
    return {f"q{i}": queue for i, queue in enumerate(queues)}


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _claim_order(task: ClaimedTask) -> tuple[int, float, str]:
    return (-task.priority, task.run_at, task.id)


def _json_ready(value: Any, what: str) -> None:
    """Refuse what JSON cannot carry before anything is written."""
    try:
        dump(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} must be JSON-serializable: {exc}") from exc


# --- submitting ----------------------------------------------------------------------


async def enqueue(conn: Conn, params: EnqueueParams, channel: str, durable: bool = True) -> list[Enqueued]:
    """Store ``params.tasks`` atomically on ``conn`` (see the module docstring).

    ``durable``: the commit waits for the WAL flush (an acknowledged submit survives a
    database crash). If ``conn`` is inside a transaction (the caller's: ``conveyor.backends.postgres_tx``)
    everything happens in it, so the tasks exist only if that transaction commits.
    """
    tasks = params.tasks
    if not tasks:
        return []
    if params.plain():
        fresh = [(t, t.initial_state) for t in tasks]
        await _insert(conn, fresh, {}, frozenset(), channel, durable)
        return [Enqueued(t.id, state, True) for t, state in fresh]
    async with conn.transaction():
        cur = conn.cursor()
        await cur.execute(Q["make_durable"], {"durable": _on(durable)})
        locks = [dump(["key", t.queue, t.idempotency_key]) for t in tasks if t.idempotency_key is not None]
        locks += [dump(["queue", q]) for q in {t.queue for t in tasks if t.queue in params.max_length}]
        if locks:
            await cur.execute(Q["lock_keys"], {"keys": locks})
        fresh, results, alias = await _dedupe(cur, tasks)
        deps = {t.id: [alias.get(d, d) for d in t.depends_on] for t, _ in fresh if t.depends_on}
        batch = {t.id for t, _ in fresh}
        parents = frozenset(d for ds in deps.values() for d in ds if d in batch)
        if deps:
            await _lock_parents(cur, deps, batch)
        await _check_bounds(cur, fresh, params.max_length)
        await _insert(conn, fresh, deps, parents, channel, durable)
        if deps:
            changed = await _link(cur, deps, channel)
            results = [Enqueued(e.id, changed.get(e.id, e.state), e.created) for e in results]
    return results


async def _insert(
    conn: Conn,
    fresh: list[tuple[NewTask, State]],
    deps: dict[str, list[str]],
    parents: frozenset[str],
    channel: str,
    durable: bool,
) -> None:
    if not fresh:
        return
    try:
        if len(fresh) == 1:  # the one-by-one submit: no JSON document to parse
            ((task, state),) = fresh
            wake = None if state in _WAITING else task.queue
            (row,) = copy_rows(fresh, deps, parents)
            await conn.execute(Q["insert_one"], (*row, channel, wake, _on(durable)))
        elif len(fresh) < COPY_FROM:
            rows = insert_rows(fresh, deps, parents)
            await conn.execute(Q["insert_tasks"], {"rows": rows, "channel": channel, "durable": _on(durable)})
        else:
            queues = [t.queue for t, state in fresh if state not in _WAITING]
            await _copy(conn, copy_rows(fresh, deps, parents), queues, channel, durable)
    except (TypeError, ValueError) as exc:  # before anything is written, or the COPY is undone
        raise InvalidInput(f"args must be JSON-serializable: {exc}") from exc
    except errors.UniqueViolation as exc:
        raise TaskExists(f"a task with one of these ids already exists ({exc.diag.message_detail})") from exc
    except DataError as exc:  # UntranslatableCharacter (a NUL in JSON), or a NUL in text
        raise InvalidInput(f"the tasks cannot be stored: {exc}") from exc


async def _copy(conn: Conn, rows: Iterable[tuple[Any, ...]], queues: list[str], channel: str, durable: bool) -> None:
    """``copy_tasks`` then ``copied_tasks``, in one transaction (a savepoint in the caller's).
    Rows are made as they stream, so the server stores some while later ones are made;
    an exception making one aborts the COPY, and the transaction rolls back."""
    async with conn.transaction():
        cur = conn.cursor()
        async with cur.copy(Q["copy_tasks"]) as copy:
            copy.set_types(COPY_TYPES)
            for row in rows:
                await copy.write_row(row)
        await cur.execute(Q["copied_tasks"], {"queues": queues, "channel": channel, "durable": _on(durable)})


async def _dedupe(
    cur: Cursor, tasks: Sequence[NewTask]
) -> tuple[list[tuple[NewTask, State]], list[Enqueued], dict[str, str]]:
    """``split_repeats`` with the stored keys this batch names."""
    seen: dict[tuple[str, str], tuple[str, State]] = {}
    keyed = [(t.queue, t.idempotency_key) for t in tasks if t.idempotency_key is not None]
    if keyed:
        await cur.execute(Q["find_idempotent"], {"queues": [q for q, _ in keyed], "keys": [k for _, k in keyed]})
        for queue, key, task_id, state in await cur.fetchall():
            seen[(queue, key)] = (task_id, State(state))
    return split_repeats(tasks, seen)


async def _lock_parents(cur: Cursor, deps: dict[str, list[str]], batch: set[str]) -> None:
    """Flag the stored parents (row-locked until commit); ``TaskNotFound`` if one is unknown."""
    outside = sorted({d for ds in deps.values() for d in ds} - batch)
    if not outside:
        return
    await cur.execute(Q["mark_parents"], {"ids": outside})
    found = {row[0] for row in await cur.fetchall()}
    for task_id, ds in deps.items():
        for dep in ds:
            if dep not in batch and dep not in found:
                raise DependencyNotFound(f"task {task_id} depends on unknown task {dep}", task_id=dep)


async def _check_bounds(cur: Cursor, fresh: list[tuple[NewTask, State]], max_length: dict[str, int]) -> None:
    """Refuse the whole batch if a bounded queue would exceed its ``max_length``."""
    adding = Counter(t.queue for t, _ in fresh if t.queue in max_length)
    for queue, count in adding.items():
        cap = max_length[queue]
        await cur.execute(Q["count_unfinished"], {"queue": queue, "cap": cap + 1})
        row = await cur.fetchone()
        if row is not None and row[0] + count > cap:
            raise QueueFull(f"queue {queue!r} is full ({cap} unfinished tasks at most)", queue=queue, max_length=cap)


async def _link(cur: Cursor, deps: dict[str, list[str]], channel: str) -> dict[str, State]:
    """Record the DAG edges; settle new tasks whose dependencies already finished."""
    pairs = [(dep, task_id) for task_id, ds in deps.items() for dep in ds]
    await cur.execute(Q["insert_deps"], {"parents": [p for p, _ in pairs], "children": [c for _, c in pairs]})
    await cur.execute(Q["deps_check_new"], {"ids": list(deps)})
    verdicts = await cur.fetchall()
    now = time.time()
    changed: dict[str, State] = {}
    ready = [task_id for task_id, verdict in verdicts if verdict == "ready"]
    if ready:
        await cur.execute(Q["mark_ready"], {"ids": ready, "now": now})
        woke = await cur.fetchall()
        changed.update((task_id, states.target("deps_succeeded")) for task_id, _ in woke)
        await _notify(cur, [queue for _, queue in woke], channel)
    doomed = [task_id for task_id, verdict in verdicts if verdict == "failed"]
    if doomed:
        await cur.execute(Q["mark_dependency_failed"], {"ids": doomed, "now": now})
        failed = [row[0] for row in await cur.fetchall()]
        changed.update(dict.fromkeys(failed, states.target("dependency_failed")))
        await fail_dependents(cur, failed, now)
    return changed


async def _notify(cur: Cursor, queues: list[str], channel: str) -> None:
    if queues:
        await cur.execute(Q["notify_queues"], {"queues": queues, "channel": channel})


async def fail_dependents(cur: Cursor, ids: list[str], now: float) -> None:
    """Fail, down the graph, every waiting task that depends on one of ``ids``."""
    while ids:
        await cur.execute(Q["lock_dependents"], {"ids": ids})
        await cur.execute(Q["deps_failed"], {"ids": ids, "now": now})
        ids = [row[0] for row in await cur.fetchall()]


# --- claiming ------------------------------------------------------------------------


async def claim(conn: Conn, p: ClaimParams) -> Claim:
    """Promote due tasks, lease the best ready ones, read the next due time: one
    statement, one round trip; the flow-controlled claim when controls exist."""
    now = time.time() if p.now is None else p.now
    expires = now + p.lease_seconds
    plain = p.limit > 0 and not p.aging_interval
    args: dict[str, Any] = {"now": now, "expires": expires, "worker_id": p.worker_id, "tags": dump(sorted(p.tags))}
    limit = p.limit if plain else 0
    if p.queues:
        cur = await conn.execute(shaped_sql("claim_queues", limit, len(p.queues)), args | queue_params(p.queues))
    else:
        cur = await conn.execute(shaped_sql("claim_all", limit), args)
    rows = await cur.fetchall()
    summary = rows.pop()  # the last row: next due time, whether flow controls exist
    due = None if summary[-2] is None else float(summary[-2])
    if p.limit > 0 and not rows and (summary[-1] or p.aging_interval):
        async with conn.transaction():
            rows, wake = await postgres_flow.claim_controlled(conn.cursor(), p, now, args | {"limit": p.limit})
        if wake is not None:
            due = wake if due is None else min(due, wake)
    tasks = [claimed_from_row(row, expires) for row in rows]
    tasks.sort(key=_claim_order)
    return Claim(tasks, due)


# --- outcomes and leases -------------------------------------------------------------


async def finish_many(conn: Conn, outcomes: Sequence[Outcome], channel: str) -> list[bool]:
    """Write each outcome whose lease still holds (a repeat of an attempt's outcome in
    the same batch is stale); one statement unless dependents or breakers are involved."""
    if not outcomes:
        return []
    now = time.time()
    for o in outcomes:
        if o.kind == "complete":
            _json_ready(o.result, "result")
    first: dict[tuple[str, str], int] = {}
    for i, o in enumerate(outcomes):
        first.setdefault((o.task_id, o.lease_token), i)
    unique = [o for i, o in enumerate(outcomes) if first[(o.task_id, o.lease_token)] == i]
    args = {"rows": outcome_rows(unique, now), "ids": [o.task_id for o in unique], "channel": channel}
    cur = await conn.execute(Q["finish_fast"], args)
    applied = {(row[0], row[1]) for row in await cur.fetchall()}
    written = {task_id for task_id, _ in applied}
    rest = [o for o in unique if o.task_id not in written]
    if rest:
        applied |= await _finish_slow(conn, rest, now, channel)
    return [
        (o.task_id, o.lease_token) in applied and first[(o.task_id, o.lease_token)] == i for i, o in enumerate(outcomes)
    ]


async def _finish_slow(conn: Conn, outcomes: list[Outcome], now: float, channel: str) -> set[tuple[str, str]]:
    """Outcomes with dependents or breakers (or stale): written, their dependents
    settled and their breakers updated, in one transaction."""
    async with conn.transaction():
        cur = conn.cursor()
        args = {"rows": outcome_rows(outcomes, now), "ids": [o.task_id for o in outcomes]}
        await cur.execute(Q["finish_slow"], args)
        rows = await cur.fetchall()
        done = {row[0]: row for row in rows}
        pairs = {(row[0], row[5]) for row in rows}
        succeeded = [r[0] for r in rows if r[1] == _SUCCEEDED and r[3]]
        failed = [r[0] for r in rows if r[1] == _FAILED and r[3]]
        woke = [r[4] for r in rows if r[1] == states.target("retry").value]
        if succeeded:
            await cur.execute(Q["lock_dependents"], {"ids": succeeded})
            await cur.execute(Q["deps_succeeded"], {"ids": succeeded, "now": now})
            woke += [queue for _, queue in await cur.fetchall()]
        if failed:
            await fail_dependents(cur, failed, now)
        applied = [(o, done[o.task_id][2]) for o in outcomes if (o.task_id, o.lease_token) in pairs]
        await postgres_flow.record_breakers(cur, applied, now)
        await _notify(cur, woke, channel)
    return pairs


async def release(conn: Conn, p: ReleaseParams, channel: str) -> int:
    if not p.leases:
        return 0
    args = {"rows": lease_rows(p.leases), "ids": [ls.task_id for ls in p.leases], "now": time.time()}
    args |= {"worker_id": p.worker_id, "reason": p.reason}
    async with conn.transaction():
        cur = conn.cursor()
        await cur.execute(Q["release"], args)
        queues = [row[0] for row in await cur.fetchall()]
        await _notify(cur, queues, channel)
    return len(queues)


async def reap(conn: Conn, p: ReapParams, channel: str) -> list[str]:
    now = time.time() if p.now is None else p.now
    async with conn.transaction():
        cur = conn.cursor()
        await cur.execute(Q["reap_expired"], {"now": now, "limit": p.limit})
        rows = sorted(await cur.fetchall(), key=lambda r: (r[3], r[0]))
        failed = [r[0] for r in rows if r[1] == _FAILED]
        await fail_dependents(cur, failed, now)
        await _notify(cur, [r[2] for r in rows if r[1] != _FAILED], channel)
    return [r[0] for r in rows]


async def cancel(conn: Conn, p: CancelParams) -> Task:
    now = time.time()
    async with conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(Q["make_durable"], {"durable": "on"})
        await cur.execute(Q["cancel"], {"id": p.task_id, "now": now, "reason": p.reason})
        row = await cur.fetchone()
        if row is None:
            await _refuse(cur, p.task_id, "cancel")
        await fail_dependents(conn.cursor(), [p.task_id], now)
    assert row is not None
    return task_from_row(row)


async def _refuse(cur: AsyncCursor[Any], task_id: str, transition: str) -> NoReturn:
    """Explain why a by-id transition matched no row."""
    await cur.execute(Q["task_state"], {"id": task_id})
    row = await cur.fetchone()
    if row is None:
        raise TaskNotFound(f"task {task_id} not found", task_id=task_id)
    states.check(row["state"], transition, task_id)
    raise InvalidStateTransition(f"cannot {transition} task {task_id}", task_id=task_id)


async def get(conn: Conn, task_id: str) -> Task:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(Q["get_task"], {"id": task_id})
    row = await cur.fetchone()
    if row is None:
        raise TaskNotFound(f"task {task_id} not found", task_id=task_id)
    return task_from_row(row)


async def heartbeat(conn: Conn, p: HeartbeatParams) -> list[str]:
    """Touch the registry row; extend the leases still held; report the rest lost."""
    now = time.time() if p.now is None else p.now
    args = {
        "worker_id": p.worker_id,
        "state": p.state.value,
        "active": p.active,
        "processed": p.processed,
        "now": now,
        "expires": now + p.lease_seconds,
        "rows": lease_rows(p.leases),
        "ids": [ls.task_id for ls in p.leases],
    }
    cur = await conn.execute(Q["heartbeat"], args)
    kept = {(row[0], row[1]) for row in await cur.fetchall()}
    return [ls.task_id for ls in p.leases if (ls.task_id, ls.lease_token) not in kept]
