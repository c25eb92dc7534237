"""The SQLite engine's admin operations: listings, the dead-letter queue, queue
depths, statistics and the worker registry. Off the hot path, so these favour
plain SQL over cleverness; they share ``TaskOps``'s connection and thread."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from typing import Any

from conveyor import states
from conveyor.backends import sqlite_flow
from conveyor.backends.base import (
    PURGED_KEY,
    REPLAYED_KEY,
    ListParams,
    OutboxClaimParams,
    OutboxEvent,
    OutboxSettle,
    TaskFilter,
)
from conveyor.backends.codec import dump, dump_list, outbox_event
from conveyor.backends.sqlite_ops import Connection, Q
from conveyor.backends.sqlite_rows import restore_row, stamp, task_from_row, worker_from_row, worker_row
from conveyor.errors import TaskNotFound
from conveyor.features.flow import FlowControl, QueueUpdate, open_breakers
from conveyor.models import FINISHED_WINDOW, Page, QueueInfo, Stats, Task, WorkerInfo
from conveyor.priority import band_of
from conveyor.states import State

_FAILED = states.target("fail").value


class OutboxOps(Connection):
    """The outbox (``OutboxStore``): the triggers of migration 0005 record events;
    these read, lease and drop them."""

    def outbox_subscribe(self, events: frozenset[str]) -> None:
        with self._write() as cur:
            cur.execute(Q["outbox_unsubscribe_all"])
            cur.executemany(Q["outbox_subscribe"], [(e,) for e in sorted(events)])

    def outbox_claim(self, params: OutboxClaimParams) -> list[OutboxEvent]:
        now = time.time() if params.now is None else params.now
        with self._write() as cur:
            rows = cur.execute(
                Q["outbox_claim"], {"now": now, "until": now + params.lease_seconds, "limit": params.limit}
            ).fetchall()
        return sorted((outbox_event(row) for row in rows), key=lambda e: e.id)

    def outbox_settle(self, settles: list[OutboxSettle]) -> None:
        with self._write() as cur:
            drop = [int(s.id) for s in settles if s.retry_at is None]
            if drop:
                cur.execute(Q["outbox_drop"], (dump(drop),))
            cur.executemany(
                Q["outbox_retry"],
                [(s.retry_at, dump_list(s.done), int(s.id)) for s in settles if s.retry_at is not None],
            )

    def outbox_size(self) -> int:
        row = self.conn.execute(Q["outbox_size"]).fetchone()
        return int(row[0])


class MetricOps(Connection):
    """Metric totals (``MetricStore``): additive upserts in one transaction."""

    def metrics_add(self, deltas: list[tuple[str, float]]) -> None:
        with self._write() as cur:
            cur.executemany(Q["metrics_add"], deltas)

    def metrics_read(self) -> dict[str, float]:
        return {key: value for key, value in self.conn.execute(Q["metrics_read"])}


class BoundOps(Connection):
    """Queue bounds set at run time (``FlowStore.queue_bound_set``)."""

    def queue_bound_set(self, queue: str, max_length: int | None) -> None:
        with self._write() as cur:
            if max_length is None:
                cur.execute(Q["bound_drop"], (queue,))
            else:
                cur.execute(Q["bound_set"], (queue, max_length))

    def queue_bounds(self) -> dict[str, int]:
        return {queue: int(bound) for queue, bound in self.conn.execute(Q["bounds"])}


class AdminOps(OutboxOps, MetricOps, BoundOps):
    """One method per ``AdminStore`` and ``WorkerRegistry`` operation (bar heartbeats)."""

    def task_restore(self, tasks: list[Task]) -> int:
        """Each exported task as it was; new rows are counted per (queue, state,
        priority) and waiting ones linked to their parents, in one transaction."""
        added: Counter[tuple[str, str, int]] = Counter()
        links: list[tuple[str, str]] = []
        with self._write() as cur:
            for task in tasks:
                row = cur.execute(Q["restore_task"], restore_row(task)).fetchone()
                if row is None:
                    continue  # its id or its idempotency key is taken
                added[(row[0], row[1], row[2])] += 1
                if task.state is State.WAITING:
                    links += [(parent, task.id) for parent in task.depends_on]
            cur.executemany(Q["count_new"], [(*key, n) for key, n in added.items()])
            cur.executemany(Q["insert_dep"], links)
        return sum(added.values())

    def worker_register(self, info: WorkerInfo) -> None:
        with self._write() as cur:
            cur.execute(Q["worker_upsert"], worker_row(info))

    def worker_deregister(self, worker_id: str) -> None:
        with self._write() as cur:
            cur.execute(Q["worker_offline"], {"id": worker_id})

    def worker_list(self, offline_after: float) -> list[WorkerInfo]:
        cur = self.conn.cursor()
        cur.row_factory = sqlite3.Row
        before = time.time() - offline_after
        return [worker_from_row(row, before) for row in cur.execute(Q["worker_list"])]

    # --- admin -------------------------------------------------------------------------

    def task_list(self, p: ListParams) -> Page:
        """Newest first; ``next_cursor`` is the last id when another page follows."""
        limit = max(1, p.limit)
        args = _filter_args(p.filter) | {"state": p.filter.state, "cursor": p.cursor, "limit": limit + 1}
        if p.filter.ids is not None:
            query = Q["list_tasks_by_ids"]
        elif p.filter.state is State.FAILED:
            query = Q["list_dead"]  # the DLQ: a partial index instead of a walk of every task
        else:
            query = Q["list_tasks"]
        with self._read() as cur:
            rows = cur.execute(query, args).fetchall()
        items = [task_from_row(row) for row in rows[:limit]]
        more = len(rows) > limit
        return Page(items=items, next_cursor=items[-1].id if more else None)

    def workflow_get(self, workflow_id: str) -> list[Task]:
        """Every node of the workflow, oldest first."""
        with self._read() as cur:
            rows = cur.execute(Q["workflow_tasks"], {"workflow_id": workflow_id}).fetchall()
        return [task_from_row(row) for row in rows]

    def task_replay(self, flt: TaskFilter) -> int:
        """Failed tasks back to ``pending`` (a state in ``flt`` is ignored: dead letters only)."""
        with self._write() as cur:
            query = Q["replay"] if flt.ids is None else Q["replay_by_ids"]
            now = time.time()
            count = cur.execute(query, _filter_args(flt) | {"now": now, "at": stamp(now)}).rowcount
            if count > 0:
                cur.execute(Q["metrics_add"], (REPLAYED_KEY, count))
        if count > 0:
            self.notify()
        return max(count, 0)

    def task_purge(self, flt: TaskFilter) -> int:
        """Delete dead letters and their DAG edges; frees their idempotency keys."""
        with self._write() as cur:
            query = Q["purge"] if flt.ids is None else Q["purge_by_ids"]
            ids = [task_id for (task_id,) in cur.execute(query, _filter_args(flt)).fetchall()]
            if ids:
                cur.execute(Q["purge_deps"], {"ids": dump(ids)})
                cur.execute(Q["metrics_add"], (PURGED_KEY, len(ids)))
        return len(ids)

    def queue_list(self) -> list[QueueInfo]:
        with self._read() as cur:
            return self._queues(cur)

    # --- flow control (conveyor.features.flow) -------------------------------------------

    def queue_update(self, update: QueueUpdate) -> FlowControl:
        with self._write() as cur:
            control = sqlite_flow.queue_update(cur, update)
        self.notify()  # a resumed queue or a looser limit: waiting workers claim again
        return control

    def flow_list(self) -> list[FlowControl]:
        with self._read() as cur:
            return list(sqlite_flow.load_controls(cur).values())

    def task_ahead(self, task_id: str) -> int:
        with self._read() as cur:
            row = cur.execute(Q["get_task"], {"id": task_id}).fetchone()
            if row is None:
                raise TaskNotFound(f"task {task_id} not found", task_id=task_id)
            if State(row["state"]) not in states.sources("claim"):
                return 0
            keys = {k: row[k] for k in ("queue", "priority", "run_at", "id")}
            return int(cur.execute(Q["task_ahead"], keys).fetchone()[0])

    def _queues(self, cur: sqlite3.Cursor) -> list[QueueInfo]:
        """Counts from the trigger-kept ``task_counts`` (a few rows); bands from priorities
        here, so ``conveyor.priority`` stays the one place that defines them."""
        queues: dict[str, QueueInfo] = {}
        for queue, state, count in cur.execute(Q["queue_counts"]):
            info = queues.setdefault(queue, QueueInfo.empty(queue))
            info.counts[state] = count
        for queue, priority, count in cur.execute(Q["queue_ready_priorities"]):
            info = queues.setdefault(queue, QueueInfo.empty(queue))
            info.pending_by_band[band_of(priority).value] += count
        for control in sqlite_flow.load_controls(cur).values():
            if control.kind == "queue":
                queues.setdefault(control.name, QueueInfo.empty(control.name)).paused = control.paused
        return [queues[name] for name in sorted(queues)]

    def stats(self, offline_after: float) -> Stats:
        now = time.time()
        with self._read() as cur:
            queues = self._queues(cur)
            finished = cur.execute(Q["finished_since"], {"since": now - FINISHED_WINDOW}).fetchone()[0]
            breakers = open_breakers(sqlite_flow.load_controls(cur).values())
        return Stats.collect(queues, self.worker_list(offline_after), finished, breakers)


def _filter_args(flt: TaskFilter) -> dict[str, Any]:
    """Named parameters of a ``TaskFilter``; ``None`` matches everything."""
    args: dict[str, Any] = {"queue": flt.queue, "name": flt.name, "label": flt.label}
    if flt.ids is not None:
        args["ids"] = dump(list(flt.ids))
    return args
