"""The SQLite engine's task operations, as plain synchronous methods on one connection.

``SqliteBackend`` runs every method here (and in ``sqlite_admin``) on its connection
thread; nothing here knows about asyncio. Each method is one transaction: writes
start with ``BEGIN IMMEDIATE`` so that two processes never both hold a read lock and
then deadlock upgrading it, and the SQL lives in ``sql/sqlite/queries.sql``.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from itertools import chain
from operator import itemgetter
from typing import Any, NoReturn

from conveyor import states
from conveyor.backends import sqlite_flow
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
from conveyor.backends.codec import dump, dump_list
from conveyor.backends.sqlfiles import load_migrations, load_queries
from conveyor.backends.sqlite_rows import (
    claimed_from_row,
    insert_row,
    outcome_row,
    stamp,
    task_from_row,
)
from conveyor.errors import DependencyNotFound, InvalidStateTransition, QueueFull, TaskExists, TaskNotFound
from conveyor.models import ClaimedTask, NewTask, Task
from conveyor.states import State

Q = load_queries("sqlite")
_FINISH = {"complete": Q["finish_complete"], "retry": Q["finish_retry"], "fail": Q["finish_fail"]}
_RUNNING = states.target("claim").value
_FAILED = states.target("fail").value
_WAKING = (State.PENDING, State.SCHEDULED)  # new work a waiter may claim now or soon


# Rows per multi-row INSERT: stepping one statement per row (``executemany``) cost a
# third of a bulk submit's insert; 50 rows of 19 parameters stay far below SQLite's
# limit of 32,766 parameters per statement.
INSERT_CHUNK = 50
_INSERT_HEAD, _INSERT_ROW = Q["insert_task"].rsplit("VALUES", 1)
_INSERT_CHUNK = _INSERT_HEAD + "VALUES" + ",".join([_INSERT_ROW] * INSERT_CHUNK)
_COUNT_KEY = itemgetter(3, 5, 4)  # queue, state, priority of an insert_row row: a count_new key


def insert_tasks(cur: sqlite3.Cursor, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert ``insert_row`` rows: ``INSERT_CHUNK`` per statement, the rest one by one."""
    whole = len(rows) - len(rows) % INSERT_CHUNK
    for start in range(0, whole, INSERT_CHUNK):
        cur.execute(_INSERT_CHUNK, list(chain.from_iterable(rows[start : start + INSERT_CHUNK])))
    if whole < len(rows):
        cur.executemany(Q["insert_task"], rows[whole:])


def _claim_order(task: ClaimedTask) -> tuple[int, float, str]:
    return (-task.priority, task.run_at, task.id)


class Connection:
    """Transactions on the one connection; ``notify`` wakes same-process waiters."""

    def __init__(self, conn: sqlite3.Connection, notify: Callable[[], None]) -> None:
        self.conn = conn
        self.notify = notify

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction; the write lock is taken up front (``IMMEDIATE``)."""
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
            cur.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Cursor]:
        """One consistent snapshot for several SELECTs (never blocks writers in WAL)."""
        cur = self.conn.cursor()
        cur.row_factory = sqlite3.Row
        cur.execute("BEGIN")
        try:
            yield cur
        finally:
            self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()

    def migrate(self) -> list[str]:
        """Apply the numbered migrations not yet recorded, all in one transaction."""
        applied: list[str] = []
        with self._write() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS conveyor_migrations "
                "(name TEXT PRIMARY KEY NOT NULL, applied_at REAL NOT NULL)"
            )
            done = {row[0] for row in cur.execute("SELECT name FROM conveyor_migrations")}
            for name, sql in load_migrations("sqlite"):
                if name in done:
                    continue
                for statement in _statements(sql):
                    cur.execute(statement)
                cur.execute("INSERT INTO conveyor_migrations VALUES (?, ?)", (name, time.time()))
                applied.append(name)
        return applied


class TaskOps(Connection):
    """The hot path: one method per ``TaskStore`` operation, plus heartbeats."""

    def __init__(self, conn: sqlite3.Connection, notify: Callable[[], None]) -> None:
        super().__init__(conn, notify)
        self.seen_version: int | None = None  # PRAGMA data_version before the last claim

    def checkpoint(self) -> None:
        """Copy what the WAL holds into the database file, without waiting on readers."""
        self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def data_version(self) -> int:
        """Changes whenever another connection commits to the file."""
        row = self.conn.execute(Q["data_version"]).fetchone()
        return int(row[0])

    def wait_start(self, queues: Sequence[str]) -> tuple[int, float | None]:
        """What ``task_wait`` needs first: the data version and the next due time."""
        return self.data_version(), self.next_due(queues)

    # --- submitting --------------------------------------------------------------------

    def task_enqueue_many(self, params: EnqueueParams) -> list[Enqueued]:
        if not params.tasks:
            return []
        with self._write() as cur:
            fresh, results, alias = self._dedupe(cur, params.tasks)
            deps = self._resolve_dependencies(cur, fresh, alias)
            self._check_bounds(cur, fresh, params.max_length)
            rows = [insert_row(t, state, deps.get(t.id)) for t, state in fresh]
            try:
                insert_tasks(cur, rows)
            except sqlite3.IntegrityError as exc:
                raise TaskExists(f"a task with one of these ids already exists ({exc})") from exc
            added = Counter(map(_COUNT_KEY, rows))
            cur.executemany(Q["count_new"], [(*key, n) for key, n in added.items()])
            if deps:
                changed = self._link_dependencies(cur, deps)
                results = [Enqueued(e.id, changed.get(e.id, e.state), e.created) for e in results]
        if any(e.created and e.state in _WAKING for e in results):
            self.notify()
        return results

    def _dedupe(
        self, cur: sqlite3.Cursor, tasks: Sequence[NewTask]
    ) -> tuple[list[tuple[NewTask, State]], list[Enqueued], dict[str, str]]:
        """``split_repeats`` with the stored keys this batch names."""
        seen: dict[tuple[str, str], tuple[str, State]] = {}
        keyed = [[t.queue, t.idempotency_key] for t in tasks if t.idempotency_key is not None]
        if keyed:
            for queue, key, task_id, state in cur.execute(Q["find_idempotent"], {"keys": dump(keyed)}):
                seen[(queue, key)] = (task_id, State(state))
        return split_repeats(tasks, seen)

    def _resolve_dependencies(
        self, cur: sqlite3.Cursor, fresh: list[tuple[NewTask, State]], alias: dict[str, str]
    ) -> dict[str, list[str]]:
        """``{task id: dependency ids}`` of the new tasks that have some; every
        dependency must be stored already or be in this batch (else ``TaskNotFound``)."""
        deps = {t.id: [alias.get(d, d) for d in t.depends_on] for t, _ in fresh if t.depends_on}
        if not deps:
            return deps
        batch = {t.id for t, _ in fresh}
        outside = sorted({d for ds in deps.values() for d in ds} - batch)
        if outside:
            found = {row[0] for row in cur.execute(Q["existing_ids"], {"ids": dump(outside)})}
            for task_id, ds in deps.items():
                for dep in ds:
                    if dep not in batch and dep not in found:
                        raise DependencyNotFound(f"task {task_id} depends on unknown task {dep}", task_id=dep)
        return deps

    def _check_bounds(
        self, cur: sqlite3.Cursor, fresh: list[tuple[NewTask, State]], max_length: dict[str, int]
    ) -> None:
        """Refuse the whole batch if a bounded queue would exceed its ``max_length``."""
        if not max_length:
            return
        adding = Counter(t.queue for t, _ in fresh if t.queue in max_length)
        for queue, count in adding.items():
            cap = max_length[queue]
            have = cur.execute(Q["count_unfinished"], {"queue": queue, "cap": cap}).fetchone()[0]
            if have + count > cap:
                raise QueueFull(
                    f"queue {queue!r} is full ({cap} unfinished tasks at most)", queue=queue, max_length=cap
                )

    def _link_dependencies(self, cur: sqlite3.Cursor, deps: dict[str, list[str]]) -> dict[str, State]:
        """Record the DAG edges; settle new tasks whose dependencies already finished."""
        cur.executemany(Q["insert_dep"], [(dep, task_id) for task_id, ds in deps.items() for dep in ds])
        verdicts = cur.execute(Q["deps_check_new"], {"ids": dump(list(deps))}).fetchall()
        now = time.time()
        at = {"now": now, "at": stamp(now)}
        changed: dict[str, State] = {}
        ready = [task_id for task_id, verdict in verdicts if verdict == "ready"]
        if ready:
            for (task_id,) in cur.execute(Q["mark_ready"], {"ids": dump(ready)} | at).fetchall():
                changed[task_id] = states.target("deps_succeeded")
        doomed = [task_id for task_id, verdict in verdicts if verdict == "failed"]
        if doomed:
            rows = cur.execute(Q["mark_dependency_failed"], {"ids": dump(doomed)} | at).fetchall()
            failed = [task_id for (task_id,) in rows]
            changed.update(dict.fromkeys(failed, states.target("dependency_failed")))
            self._fail_dependents(cur, failed, now)
        return changed

    def _fail_dependents(self, cur: sqlite3.Cursor, ids: list[str], now: float) -> None:
        """Fail, down the graph, every waiting task that depends on one of ``ids``."""
        while ids:
            rows = cur.execute(Q["deps_failed"], {"ids": dump(ids), "now": now, "at": stamp(now)}).fetchall()
            ids = [task_id for (task_id,) in rows]

    # --- working -----------------------------------------------------------------------

    def task_claim(self, p: ClaimParams) -> Claim:
        """Promote due tasks, then lease the best ready ones, in one transaction."""
        now = time.time() if p.now is None else p.now
        self.seen_version = self.data_version()  # any later commit elsewhere wakes task_wait
        expires = now + p.lease_seconds
        at = {"now": now, "at": stamp(now)}
        args: dict[str, Any] = at | {"limit": p.limit, "worker_id": p.worker_id}
        args |= {"expires": expires, "tags": dump_list(p.tags)}
        wake: float | None = None
        with self._write() as cur:
            cur.execute(Q["promote_due"], at)
            rows: list[Any] = []
            loaded = sqlite_flow.load_for_claim(cur)  # usually no controls: the plain path below
            if p.limit > 0 and (loaded[0] or p.aging_interval):
                rows, wake = sqlite_flow.claim_controlled(cur, p, now, loaded, args)
            elif p.limit > 0:
                rows = sqlite_flow.claim_plain(cur, p, args)
            due = self._next_due(cur, p.queues)
        if wake is not None:
            due = wake if due is None else min(due, wake)
        tasks = [claimed_from_row(row, expires) for row in rows]
        tasks.sort(key=_claim_order)
        return Claim(tasks, due)

    def next_due(self, queues: Sequence[str]) -> float | None:
        """When the next ``scheduled``/``retrying`` task in ``queues`` falls due."""
        return self._next_due(self.conn.cursor(), queues)

    def _next_due(self, cur: sqlite3.Cursor, queues: Sequence[str]) -> float | None:
        if queues:
            row = cur.execute(Q["next_due_queues"], {"queues": dump(list(queues))}).fetchone()
        else:
            row = cur.execute(Q["next_due_all"]).fetchone()
        return None if row is None else float(row[0])

    def task_finish_many(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """Write each outcome whose lease still holds; all in one transaction."""
        if not outcomes:
            return []
        now = time.time()
        applied: list[bool] = []
        batches: dict[str, list[tuple[Any, ...]]] = {"complete": [], "retry": [], "fail": []}
        with self._write() as cur:
            held = self._lease_holders(cur, [o.task_id for o in outcomes])
            for o in outcomes:
                state, token = held.get(o.task_id, ("", None))
                ok = bool(state) and token == o.lease_token and states.allowed(state, o.kind)
                if ok:
                    held[o.task_id] = ("", None)  # a second outcome for this attempt is stale
                    batches[o.kind].append(outcome_row(o, now))
                applied.append(ok)
            for kind, rows in batches.items():
                if rows:
                    cur.executemany(_FINISH[kind], rows)
            sqlite_flow.record_breakers(cur, outcomes, applied, now)
            woke = self._settle_dependents(cur, batches, now) or bool(batches["retry"])
        if woke:
            self.notify()
        return applied

    def _lease_holders(self, cur: sqlite3.Cursor, ids: list[str]) -> dict[str, tuple[str, str | None]]:
        rows = cur.execute(Q["lease_holders"], {"ids": dump(ids)})
        return {task_id: (state, token) for task_id, state, token in rows}

    def _settle_dependents(self, cur: sqlite3.Cursor, batches: dict[str, list[tuple[Any, ...]]], now: float) -> bool:
        """Release dependents of succeeded tasks, fail those of failed ones; whether
        some became ready."""
        woke = False
        if batches["complete"]:
            args = {"ids": dump([row[0] for row in batches["complete"]]), "now": now, "at": stamp(now)}
            woke = bool(cur.execute(Q["deps_succeeded"], args).fetchall())
        if batches["fail"]:
            self._fail_dependents(cur, [row[0] for row in batches["fail"]], now)
        return woke

    def task_release(self, p: ReleaseParams) -> int:
        now = time.time()
        at = stamp(now)
        rows = [(ls.task_id, ls.lease_token, int(ls.refund), now, p.worker_id, p.reason, at) for ls in p.leases]
        if not rows:
            return 0
        with self._write() as cur:
            cur.executemany(Q["release"], rows)
            released = max(cur.rowcount, 0)
        if released:
            self.notify()
        return released

    def task_reap_expired(self, p: ReapParams) -> list[str]:
        now = time.time() if p.now is None else p.now
        with self._write() as cur:
            args = {"now": now, "at": stamp(now), "limit": p.limit}
            rows = cur.execute(Q["reap_expired"], args).fetchall()
            failed = [task_id for task_id, state in rows if state == _FAILED]
            self._fail_dependents(cur, failed, now)
        if len(failed) < len(rows):
            self.notify()
        return [task_id for task_id, _ in rows]

    def task_cancel(self, p: CancelParams) -> Task:
        now = time.time()
        with self._write() as cur:
            cur.row_factory = sqlite3.Row
            args = {"id": p.task_id, "now": now, "at": stamp(now), "reason": p.reason}
            rows = cur.execute(Q["cancel"], args).fetchall()
            if not rows:
                self._refuse(cur, p.task_id, "cancel")
            self._fail_dependents(cur, [p.task_id], now)
        return task_from_row(rows[0])

    def _refuse(self, cur: sqlite3.Cursor, task_id: str, transition: str) -> NoReturn:
        """Explain why a by-id transition matched no row."""
        row = cur.execute(Q["task_state"], {"id": task_id}).fetchone()
        if row is None:
            raise TaskNotFound(f"task {task_id} not found", task_id=task_id)
        states.check(row[0], transition, task_id)
        raise InvalidStateTransition(f"cannot {transition} task {task_id}", task_id=task_id)

    def task_get(self, task_id: str) -> Task:
        cur = self.conn.cursor()
        cur.row_factory = sqlite3.Row
        row = cur.execute(Q["get_task"], {"id": task_id}).fetchone()
        if row is None:
            raise TaskNotFound(f"task {task_id} not found", task_id=task_id)
        return task_from_row(row)

    # --- workers ---------------------------------------------------------------------

    def worker_heartbeat(self, p: HeartbeatParams) -> list[str]:
        """Touch the registry row; extend the leases still held; report the rest lost."""
        now = time.time() if p.now is None else p.now
        touch = {"id": p.worker_id, "state": p.state.value, "active": p.active, "processed": p.processed}
        lost: list[str] = []
        with self._write() as cur:
            cur.execute(Q["worker_touch"], touch | {"now": now})
            if p.leases:
                held = self._lease_holders(cur, [ls.task_id for ls in p.leases])
                keep: list[tuple[float, str, str]] = []
                for ls in p.leases:
                    if held.get(ls.task_id) == (_RUNNING, ls.lease_token):
                        keep.append((now + p.lease_seconds, ls.task_id, ls.lease_token))
                    else:
                        lost.append(ls.task_id)
                cur.executemany(Q["extend_lease"], keep)
        return lost


def _statements(script: str) -> Iterator[str]:
    """Split a migration script into statements (``executescript`` would commit)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
