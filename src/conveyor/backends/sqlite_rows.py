"""Rows of the SQLite engine to models and back: JSON columns, epoch times, parameters.

Kept apart from the operations so the hot path reads as SQL calls. The claim path
builds only ``ClaimedTask`` dataclasses; full ``Task`` models (pydantic) are built
for readers (``get``, listings, cancel), where their cost does not matter.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from conveyor.backends.base import Outcome
from conveyor.backends.codec import (
    dump,
    dump_list,
    dump_policy,
    load_list,
    load_policy,
    task_from_decoded,
    worker_from_decoded,
)
from conveyor.models import ClaimedTask, NewTask, Task, WorkerInfo, to_ts
from conveyor.states import State

_decode = json.loads


def stamp(ts: float) -> str:
    """A time as JSON text for a history entry's ``at``: the shortest exact repr, so
    the entry reads back equal to the REAL ``updated_at`` column."""
    return repr(ts)


# The first history entry (transition ``enqueue``); states and times need no escaping.
_FIRST_ENTRY = '[{"at":%s,"state":"%s","transition":"enqueue","worker_id":null,"reason":null}]'


_last_entry: tuple[float, State | None, str] = (0.0, None, "")


def first_entry(created_at: float, state: State) -> str:
    """The history of a new task; a batch shares one ``created_at``, so the text of
    the previous task is usually the right one."""
    global _last_entry
    last = _last_entry  # one read: the engine and the loop thread both get here
    if last[0] == created_at and last[1] is state:
        return last[2]
    text = _FIRST_ENTRY % (stamp(created_at), state.value)
    _last_entry = (created_at, state, text)
    return text


def insert_row(task: NewTask, state: State, depends_on: list[str] | None = None) -> tuple[Any, ...]:
    """Positional parameters of the ``insert_task`` query (``created_at`` twice: it is
    also the first ``updated_at``); ``depends_on`` overrides the task's own list (after
    idempotent repeats were mapped to their first task)."""
    return (
        task.id,
        task.name,
        dump(task.args) if task.args else "{}",
        task.queue,
        task.priority,
        state._value_,  # the plain attribute: ``.value`` is a property, 6x slower per row
        dump_list(task.labels),
        dump_list(task.requires),
        task.run_at,
        dump_list(task.depends_on if depends_on is None else depends_on),
        task.idempotency_key,
        task.max_retries,
        task.timeout,
        dump_policy(task.retry),
        task.created_at,
        task.created_at,
        first_entry(task.created_at, state),
        task.workflow_id,
        task.workflow_key,
        dump(task.headers) if task.headers else None,
    )


def restore_row(t: Task) -> tuple[Any, ...]:
    """Positional parameters of ``restore_task``: an exported task, every field as it was."""

    history = [
        {"at": e.at.timestamp(), "state": e.state.value, "transition": e.transition,
         "worker_id": e.worker_id, "reason": e.reason}
        for e in t.history
    ]  # fmt: skip
    return (
        t.id,
        t.name,
        dump(t.args) if t.args else "{}",
        t.queue,
        t.priority,
        t.state.value,
        dump_list(t.labels),
        dump_list(t.requires),
        t.run_at.timestamp(),
        dump_list(t.depends_on),
        t.idempotency_key,
        t.max_retries,
        t.timeout,
        dump_policy(t.retry),
        t.attempts,
        None if t.result is None else dump(t.result),
        None if t.error is None else t.error.model_dump_json(),
        None if t.failure_reason is None else t.failure_reason.value,
        t.worker_id,
        to_ts(t.lease_expires_at),
        t.created_at.timestamp(),
        to_ts(t.started_at),
        to_ts(t.finished_at),
        t.updated_at.timestamp(),
        dump(history),
        t.workflow_id,
        t.workflow_key,
        dump(t.headers) if t.headers else None,
    )


def outcome_row(o: Outcome, now: float) -> tuple[Any, ...]:
    """Positional parameters of the ``finish_*`` queries (same shape for all three).

    The outcome's ``finished_at`` (when the attempt ended) is the transition's time.
    """
    finished = o.finished_at if o.finished_at is not None else now
    error = o.error.model_dump_json() if o.error is not None else None
    if o.kind == "complete":
        payload: Any = dump(o.result)
    elif o.kind == "retry":
        payload = o.run_at if o.run_at is not None else finished
    else:
        payload = o.failure_reason.value if o.failure_reason is not None else "permanent_error"
    return (o.task_id, o.lease_token, payload, error, finished, stamp(finished), o.worker_id)


def claimed_from_row(row: tuple[Any, ...], expires: float) -> ClaimedTask:
    """A ``claim_*`` RETURNING row: id, name, args, queue, priority, attempts,
    max_retries, timeout, retry, run_at, created_at, labels, lease_token, workflow_id,
    headers."""
    return ClaimedTask(
        id=row[0],
        name=row[1],
        args=_decode(row[2]),
        queue=row[3],
        priority=row[4],
        attempts=row[5],
        max_retries=row[6],
        timeout=row[7],
        retry=load_policy(row[8]),
        lease_token=row[12],
        lease_expires_at=expires,
        run_at=row[9],
        created_at=row[10],
        labels=load_list(row[11]),
        workflow_id=row[13],
        headers=_decode(row[14]) if row[14] else {},
    )


_JSON_COLUMNS = ("args", "history", "result", "error", "headers")
_LIST_COLUMNS = ("labels", "requires", "depends_on")


def task_from_row(row: sqlite3.Row) -> Task:
    """A full ``tasks`` row (``SELECT *``) as the public model: its JSON text decoded."""
    fields = dict(zip(row.keys(), row, strict=True))
    for column in _JSON_COLUMNS:
        text = fields[column]
        fields[column] = None if text is None else _decode(text)
    for column in _LIST_COLUMNS:
        fields[column] = load_list(fields[column])
    return task_from_decoded(fields)


def worker_row(info: WorkerInfo) -> dict[str, Any]:
    """Named parameters of ``worker_upsert``."""
    started = info.started_at.timestamp()
    return {
        "id": info.id,
        "host": info.host,
        "pid": info.pid,
        "queues": dump_list(info.queues),
        "tags": dump_list(info.tags),
        "concurrency": info.concurrency,
        "pool": info.pool,
        "version": info.version,
        "state": info.state.value,
        "active": info.active,
        "processed": info.processed,
        "started_at": started,
        "last_heartbeat_at": info.last_heartbeat_at.timestamp(),
    }


def worker_from_row(row: sqlite3.Row, offline_before: float) -> WorkerInfo:
    """A ``workers`` row; it reads ``offline`` once its last heartbeat is too old."""
    fields = dict(zip(row.keys(), row, strict=True))
    fields["queues"], fields["tags"] = load_list(row["queues"]), load_list(row["tags"])
    return worker_from_decoded(fields, offline_before)
