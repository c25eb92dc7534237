"""Rows of the SQLite engine to models and back: JSON columns, epoch times, parameters.

Kept apart from the operations so the hot path reads as SQL calls. The claim path
builds only ``ClaimedTask`` dataclasses; full ``Task`` models (pydantic) are built
for readers (``get``, listings, cancel), where their cost does not matter.
"""

from __future__ import annotations

import json
import sqlite3
from functools import lru_cache
from typing import Any

from conveyor.backends.base import Outcome
from conveyor.models import ClaimedTask, NewTask, Task, TaskError, WorkerInfo, WorkerState, to_dt
from conveyor.priority import band_of
from conveyor.retry import RetryPolicy
from conveyor.states import State

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_decode = json.loads
EMPTY_LIST = "[]"


def dump(value: Any) -> str:
    """Compact JSON text for a TEXT column."""
    return _encode(value)


def dump_list(values: list[str] | tuple[str, ...] | frozenset[str]) -> str:
    """A JSON array; the empty one is a constant, the common case for labels and tags."""
    return _encode(sorted(values) if isinstance(values, frozenset) else list(values)) if values else EMPTY_LIST


def load_list(text: str) -> list[str]:
    return [] if text == EMPTY_LIST else list(_decode(text))


_policy_json: dict[tuple[Any, ...], str] = {}


def dump_policy(policy: RetryPolicy) -> str:
    """Policies repeat across tasks, so each is serialized once (keyed by its field
    values: cheaper than hashing and comparing the pydantic model)."""
    key = tuple(policy.__dict__.values())
    text = _policy_json.get(key)
    if text is None:
        if len(_policy_json) >= 1024:
            _policy_json.clear()
        text = _policy_json[key] = policy.model_dump_json()
    return text


@lru_cache(maxsize=512)
def load_policy(text: str) -> RetryPolicy:
    """Shared instances are safe: ``RetryPolicy`` is frozen."""
    return RetryPolicy.model_validate_json(text)


def stamp(ts: float) -> str:
    """A time as JSON text for a history entry's ``at``: the shortest exact repr, so
    the entry reads back equal to the REAL ``updated_at`` column."""
    return repr(ts)


# The first history entry (transition ``enqueue``); states and times need no escaping.
_FIRST_ENTRY = '[{"at":%s,"state":"%s","transition":"enqueue","worker_id":null,"reason":null}]'


def insert_row(task: NewTask, state: State, depends_on: list[str] | None = None) -> tuple[Any, ...]:
    """Positional parameters of the ``insert_task`` query; ``depends_on`` overrides
    the task's own list (after idempotent repeats were mapped to their first task)."""
    return (
        task.id,
        task.name,
        _encode(task.args) if task.args else "{}",
        task.queue,
        task.priority,
        state.value,
        dump_list(task.labels),
        dump_list(task.requires),
        task.run_at,
        dump_list(task.depends_on if depends_on is None else depends_on),
        task.idempotency_key,
        task.max_retries,
        task.timeout,
        dump_policy(task.retry),
        task.created_at,
        _FIRST_ENTRY % (stamp(task.created_at), state.value),
        task.workflow_id,
        task.workflow_key,
    )


def outcome_row(o: Outcome, now: float) -> tuple[Any, ...]:
    """Positional parameters of the ``finish_*`` queries (same shape for all three).

    The outcome's ``finished_at`` (when the attempt ended) is the transition's time.
    """
    finished = o.finished_at if o.finished_at is not None else now
    error = o.error.model_dump_json() if o.error is not None else None
    if o.kind == "complete":
        payload: Any = _encode(o.result)
    elif o.kind == "retry":
        payload = o.run_at if o.run_at is not None else finished
    else:
        payload = o.failure_reason.value if o.failure_reason is not None else "permanent_error"
    return (o.task_id, o.lease_token, payload, error, finished, stamp(finished), o.worker_id)


def claimed_from_row(row: tuple[Any, ...], expires: float) -> ClaimedTask:
    """A ``claim_*`` RETURNING row: id, name, args, queue, priority, attempts,
    max_retries, timeout, retry, run_at, created_at, labels, lease_token, workflow_id."""
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
    )


def task_from_row(row: sqlite3.Row) -> Task:
    """A full ``tasks`` row (``SELECT *``) as the public model."""
    error = row["error"]
    result = row["result"]
    history = _decode(row["history"])
    for entry in history:
        entry["at"] = to_dt(entry["at"])
    return Task.model_validate(
        {
            "id": row["id"],
            "name": row["name"],
            "args": _decode(row["args"]),
            "queue": row["queue"],
            "priority": row["priority"],
            "band": band_of(row["priority"]),
            "state": row["state"],
            "labels": load_list(row["labels"]),
            "requires": load_list(row["requires"]),
            "run_at": to_dt(row["run_at"]),
            "depends_on": load_list(row["depends_on"]),
            "idempotency_key": row["idempotency_key"],
            "max_retries": row["max_retries"],
            "timeout": row["timeout"],
            "retry": load_policy(row["retry"]),
            "attempts": row["attempts"],
            "result": None if result is None else _decode(result),
            "error": None if error is None else TaskError.model_validate_json(error),
            "failure_reason": row["failure_reason"],
            "worker_id": row["worker_id"],
            "lease_expires_at": to_dt(row["lease_expires_at"]),
            "created_at": to_dt(row["created_at"]),
            "started_at": to_dt(row["started_at"]),
            "finished_at": to_dt(row["finished_at"]),
            "updated_at": to_dt(row["updated_at"]),
            "history": history,
            "workflow_id": row["workflow_id"],
            "workflow_key": row["workflow_key"],
        }
    )


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
    state = row["state"]
    if row["last_heartbeat_at"] < offline_before:
        state = WorkerState.OFFLINE
    return WorkerInfo(
        id=row["id"],
        host=row["host"],
        pid=row["pid"],
        queues=load_list(row["queues"]),
        tags=load_list(row["tags"]),
        concurrency=row["concurrency"],
        pool=row["pool"],
        version=row["version"],
        state=state,
        active=row["active"],
        processed=row["processed"],
        started_at=to_dt(row["started_at"]),
        last_heartbeat_at=to_dt(row["last_heartbeat_at"]),
    )
