"""JSON text for stored task fields, shared by the engines that store text or JSON.

Compact encoding, a constant for the empty list (the common case for labels, tags and
dependencies), and retry policies serialized once and parsed once: every task of a
batch carries the same policy, so these sit on the submit and claim paths of the
SQLite, PostgreSQL and Redis engines alike.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from conveyor.backends.base import OutboxEvent
from conveyor.models import Task, TaskError, WorkerInfo, WorkerState, to_dt
from conveyor.priority import band_of
from conveyor.retry import RetryPolicy
from conveyor.states import State

#: Compact JSON text of a value (one encoder, built once: ``json.dumps`` builds one per call).
dump = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_decode = json.loads
EMPTY_LIST = "[]"


def dump_list(values: list[str] | tuple[str, ...] | frozenset[str]) -> str:
    """A JSON array; the empty one is a constant, the common case for labels and tags."""
    return dump(sorted(values) if isinstance(values, frozenset) else list(values)) if values else EMPTY_LIST


def load_list(text: str) -> list[str]:
    return [] if text == EMPTY_LIST else list(_decode(text))


_policy_json: dict[tuple[Any, ...], str] = {}


_last_policy: tuple[RetryPolicy | None, str] = (None, "")


def dump_policy(policy: RetryPolicy) -> str:
    """Policies repeat across tasks, so each is serialized once (keyed by its field
    values: cheaper than hashing and comparing the pydantic model); the tasks of one
    bulk submit share one instance, so the last one is remembered by identity."""
    global _last_policy
    last = _last_policy  # one read: the engine and the loop thread both get here
    if last[0] is policy:
        return last[1]
    key = tuple(policy.__dict__.values())
    text = _policy_json.get(key)
    if text is None:
        if len(_policy_json) >= 1024:
            _policy_json.clear()
        text = _policy_json[key] = policy.model_dump_json()
    _last_policy = (policy, text)  # frozen, so the text stays right for this instance
    return text


@lru_cache(maxsize=512)
def load_policy(text: str) -> RetryPolicy:
    """Shared instances are safe: ``RetryPolicy`` is frozen."""
    return RetryPolicy.model_validate_json(text)


def task_from_decoded(row: Mapping[str, Any]) -> Task:
    """A full ``tasks`` row, its JSON columns already decoded (``args``, lists,
    ``result``, ``error`` as a dict, ``history`` as entries with epoch ``at``), as the
    public model: PostgreSQL's jsonb arrives so, SQLite decodes its text first."""
    history = row["history"]
    for entry in history:
        entry["at"] = to_dt(entry["at"])
    error = row["error"]
    return Task.model_validate(
        {
            "id": row["id"],
            "name": row["name"],
            "args": row["args"],
            "queue": row["queue"],
            "priority": row["priority"],
            "band": band_of(row["priority"]),
            "state": row["state"],
            "labels": row["labels"],
            "requires": row["requires"],
            "run_at": to_dt(row["run_at"]),
            "depends_on": row["depends_on"],
            "idempotency_key": row["idempotency_key"],
            "max_retries": row["max_retries"],
            "timeout": row["timeout"],
            "retry": load_policy(row["retry"]),
            "attempts": row["attempts"],
            "result": row["result"],
            "error": None if error is None else TaskError.model_validate(error),
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
            "headers": row.get("headers") or {},
        }
    )


def outbox_event(row: Sequence[Any]) -> OutboxEvent:
    """An outbox row ``(id, event, task_id, workflow_id, queue, name, state, attempt,
    at, deliveries, done, result, error)``; ``done`` as JSON text or already a list,
    ``result`` and ``error`` as JSON text. Ids become zero-padded text, so they sort as
    numbers do wherever they are merged."""
    done = row[10]
    return OutboxEvent(
        id=f"{int(row[0]):020d}",
        event=row[1],
        task_id=row[2],
        workflow_id=row[3],
        queue=row[4],
        name=row[5],
        state=State(row[6]),
        attempt=int(row[7]),
        at=float(row[8]),
        deliveries=int(row[9]),
        done=tuple(load_list(done) if isinstance(done, str) else done),
        result=row[11],
        error=row[12],
    )


def worker_from_decoded(row: Mapping[str, Any], offline_before: float) -> WorkerInfo:
    """A ``workers`` row, its lists decoded; it reads ``offline`` once its last
    heartbeat is too old."""
    state = row["state"]
    if row["last_heartbeat_at"] < offline_before:
        state = WorkerState.OFFLINE
    return WorkerInfo(
        id=row["id"],
        host=row["host"],
        pid=row["pid"],
        queues=row["queues"],
        tags=row["tags"],
        concurrency=row["concurrency"],
        pool=row["pool"],
        version=row["version"],
        state=state,
        active=row["active"],
        processed=row["processed"],
        started_at=to_dt(row["started_at"]),
        last_heartbeat_at=to_dt(row["last_heartbeat_at"]),
    )
