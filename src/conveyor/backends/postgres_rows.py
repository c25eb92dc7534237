"""Rows of the PostgreSQL engine to models and back.

Batches go to PostgreSQL as one JSON array of objects (read there by
``jsonb_to_recordset``): one parameter, one statement, whatever the batch size, and
``json.dumps`` is cheap next to a round trip. Large submits are the exception: they
stream through ``COPY`` (``copy_rows``), which spares the server parsing one big
jsonb document and then every field out of it again; a single task sends the same
row as plain parameters (``insert_one``). jsonb columns come back decoded
by psycopg; ``retry`` is text, so equal policies share one parsed instance.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from conveyor.backends.base import Lease, Outcome
from conveyor.backends.codec import (
    dump,
    dump_list,
    dump_policy,
    load_policy,
    task_from_decoded,
    worker_from_decoded,
)
from conveyor.models import ClaimedTask, NewTask, Task, WorkerInfo, to_ts
from conveyor.states import State


def insert_rows(
    tasks: Sequence[tuple[NewTask, State]], depends: Mapping[str, list[str]], parents: set[str] | frozenset[str]
) -> str:
    """The ``insert_tasks`` batch: each task in its initial state; ``depends`` overrides
    a task's dependencies (idempotent repeats mapped to their first task), and the ids
    in ``parents`` are depended on by another task of the batch."""
    return dump(
        [
            {
                "id": t.id,
                "name": t.name,
                "args": t.args,
                "queue": t.queue,
                "priority": t.priority,
                "state": state.value,
                "labels": t.labels,
                "requires": t.requires,
                "run_at": t.run_at,
                "depends_on": depends.get(t.id, t.depends_on),
                "idempotency_key": t.idempotency_key,
                "max_retries": t.max_retries,
                "timeout": t.timeout,
                "retry": dump_policy(t.retry),
                "created_at": t.created_at,
                "workflow_id": t.workflow_id,
                "workflow_key": t.workflow_key,
                "has_dependents": t.id in parents,
                "headers": t.headers or None,
            }
            for t, state in tasks
        ]
    )


#: Column types of ``copy_tasks`` rows (text COPY: the jsonb columns travel as JSON text).
COPY_TYPES = [
    "text", "text", "text", "text", "int4", "text", "text", "text", "float8", "text",
    "text", "int4", "float8", "text", "float8", "float8", "text", "text", "text", "bool", "text",
]  # fmt: skip

# The first history entry (transition ``enqueue``), as insert_tasks builds it; repr()
# is the shortest exact text of a float, so "at" reads back equal to updated_at.
_FIRST_ENTRY = '[{"at":%r,"state":"%s","transition":"enqueue","worker_id":null,"reason":null}]'


def copy_rows(
    tasks: Sequence[tuple[NewTask, State]], depends: Mapping[str, list[str]], parents: set[str] | frozenset[str]
) -> Iterator[tuple[Any, ...]]:
    """The rows of ``copy_tasks``: the same tasks as ``insert_rows``, column by column."""
    entry: tuple[float, State | None, str] = (0.0, None, "")
    for t, state in tasks:
        if entry[0] != t.created_at or entry[1] is not state:  # a batch shares created_at
            entry = (t.created_at, state, _FIRST_ENTRY % (t.created_at, state.value))
        yield (
            t.id,
            t.name,
            dump(t.args) if t.args else "{}",
            t.queue,
            t.priority,
            state.value,
            dump_list(t.labels),
            dump_list(t.requires),
            t.run_at,
            dump_list(depends.get(t.id, t.depends_on)),
            t.idempotency_key,
            t.max_retries,
            t.timeout,
            dump_policy(t.retry),
            t.created_at,
            t.created_at,
            entry[2],
            t.workflow_id,
            t.workflow_key,
            t.id in parents,
            dump(t.headers) if t.headers else None,
        )


def outcome_rows(outcomes: Sequence[Outcome], now: float) -> str:
    """The ``finish_*`` batch; an outcome's ``finished_at`` is its transition's time."""
    rows = []
    for o in outcomes:
        at = o.finished_at if o.finished_at is not None else now
        rows.append(
            {
                "id": o.task_id,
                "token": o.lease_token,
                "kind": o.kind,
                "result": o.result if o.kind == "complete" else None,
                "error": None if o.error is None else o.error.model_dump(mode="json"),
                "run_at": (o.run_at if o.run_at is not None else at) if o.kind == "retry" else None,
                "reason": (o.failure_reason.value if o.failure_reason is not None else "permanent_error")
                if o.kind == "fail"
                else None,
                "at": at,
                "worker_id": o.worker_id,
            }
        )
    return dump(rows)


def lease_rows(leases: Sequence[Lease]) -> str:
    return dump([{"id": ls.task_id, "token": ls.lease_token, "refund": int(ls.refund)} for ls in leases])


def claimed_from_row(row: Sequence[Any], expires: float) -> ClaimedTask:
    """A claim's RETURNING row: id, name, args, queue, priority, attempts, max_retries,
    timeout, retry, run_at, created_at, labels, lease_token, workflow_id, headers."""
    return ClaimedTask(
        id=row[0],
        name=row[1],
        args=row[2],
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
        labels=row[11],
        workflow_id=row[13],
        headers=row[14] or {},
    )


def restore_rows(tasks: Sequence[Task]) -> str:
    """The ``restore_tasks`` batch: exported tasks, every field as it was (times as
    epoch seconds, as stored), except the lease token, which no worker holds."""

    return dump(
        [
            {
                "id": t.id,
                "name": t.name,
                "args": t.args,
                "queue": t.queue,
                "priority": t.priority,
                "state": t.state.value,
                "labels": t.labels,
                "requires": t.requires,
                "run_at": t.run_at.timestamp(),
                "depends_on": t.depends_on,
                "idempotency_key": t.idempotency_key,
                "max_retries": t.max_retries,
                "timeout": t.timeout,
                "retry": dump_policy(t.retry),
                "attempts": t.attempts,
                "result": t.result,
                "error": None if t.error is None else t.error.model_dump(mode="json"),
                "failure_reason": None if t.failure_reason is None else t.failure_reason.value,
                "worker_id": t.worker_id,
                "lease_expires_at": to_ts(t.lease_expires_at),
                "created_at": t.created_at.timestamp(),
                "started_at": to_ts(t.started_at),
                "finished_at": to_ts(t.finished_at),
                "updated_at": t.updated_at.timestamp(),
                "history": [e.model_dump(mode="json") | {"at": e.at.timestamp()} for e in t.history],
                "workflow_id": t.workflow_id,
                "workflow_key": t.workflow_key,
                "headers": t.headers or None,
            }
            for t in tasks
        ]
    )


def worker_params(info: WorkerInfo) -> dict[str, Any]:
    """Named parameters of ``worker_upsert``."""
    return {
        "id": info.id,
        "host": info.host,
        "pid": info.pid,
        "queues": dump(list(info.queues)),
        "tags": dump(list(info.tags)),
        "concurrency": info.concurrency,
        "pool": info.pool,
        "version": info.version,
        "state": info.state.value,
        "active": info.active,
        "processed": info.processed,
        "started_at": info.started_at.timestamp(),
        "last_heartbeat_at": info.last_heartbeat_at.timestamp(),
    }


task_from_row = task_from_decoded  # jsonb columns come back decoded by psycopg
worker_from_row = worker_from_decoded
