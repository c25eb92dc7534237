"""The Redis engine's URL, key names, and task hashes to models and back.

A task is one hash (field names in ``lua/lib.lua``'s header) plus a history list.
Fields the scripts never look inside (args, labels, timeout, the retry policy, the
workflow key, headers when there are any) travel as one JSON string ``d``, so a claim returns it untouched and
only Python parses it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlunsplit

from conveyor.backends.base import split_url
from conveyor.backends.codec import dump, dump_list, dump_policy
from conveyor.errors import InvalidInput
from conveyor.models import ClaimedTask, HistoryEntry, NewTask, Task, TaskError, WorkerInfo, WorkerState, to_dt
from conveyor.priority import band_of
from conveyor.retry import RetryPolicy
from conveyor.states import FailureReason, State

DEFAULT_PREFIX = "conveyor"
_OPTIONS = frozenset({"prefix"})


@dataclass(frozen=True, slots=True)
class RedisUrl:
    """``redis://[user:pass@]host:port/db?prefix=NAME`` split into what redis-py takes and the prefix."""

    server: str  # the URL without Conveyor's options, for ``redis.asyncio.Redis.from_url``
    prefix: str
    where: str  # host:port/db, for error messages (never the password)

    @property
    def tag(self) -> str:
        """The hash tag every key starts with: one Cluster slot per store."""
        return "{" + self.prefix + "}"


def parse_url(url: str) -> RedisUrl:
    parts = split_url(url)
    if parts.scheme.lower() not in ("redis", "rediss"):
        raise InvalidInput(f"not a Redis URL: {url!r} (expected redis://host:port/db?prefix=NAME)")
    db = parts.path.strip("/")
    if db and not (db.isascii() and db.isdigit()):  # redis-py would ignore it and use db 0
        raise InvalidInput(f"invalid URL {url!r}: the database must be a number, as in redis://host:6379/0")
    prefix, kept = DEFAULT_PREFIX, []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "prefix":
            if not value or any(c in value for c in "{}*?[] "):
                raise InvalidInput(f"invalid Redis key prefix {value!r}: use letters, digits, '-', '_', ':' or '.'")
            prefix = value
        else:
            kept.append(f"{key}={value}")
    server = urlunsplit((parts.scheme, parts.netloc, parts.path, "&".join(kept), ""))
    host = parts.hostname or "localhost"
    where = f"{host}:{parts.port or 6379}{parts.path or '/0'}"
    return RedisUrl(server, prefix, where)


# --- writing -------------------------------------------------------------------------


def _static(t: NewTask | Task) -> str:
    """The ``d`` field: what never changes after the submit, as one JSON text."""
    static = {
        "args": t.args,
        "labels": t.labels,
        "requires": t.requires,
        "timeout": t.timeout,
        "retry": dump_policy(t.retry),
        "workflow_key": t.workflow_key,
    }
    if t.headers:  # most tasks have none: their static JSON stays as it was
        static["headers"] = t.headers
    return dump(static)


def enqueue_args(t: NewTask) -> list[str | int | float]:
    """One task's ARGV slice for ``enqueue.lua`` (its header lists the order)."""
    return [
        t.id,
        t.name,
        t.queue,
        t.priority,
        repr(float(t.run_at)),
        repr(float(t.created_at)),
        t.initial_state.value,
        t.idempotency_key or "",
        t.max_retries,
        dump_list(t.requires) if t.requires else "",
        dump(list(dict.fromkeys(t.depends_on))) if t.depends_on else "",
        _static(t),
        t.workflow_id or "",
    ]


def restore_args(t: Task) -> list[str]:
    """One task's ARGV slice for ``restore.lua``: id, its hash as [field, value, ...]
    JSON (what ``task_from`` reads back; no lease token), its history entries' texts.
    Numbers go as ``repr`` text, so they are stored exactly and cjson never rounds them."""
    fields: dict[str, str | None] = {
        "s": t.state.value,
        "n": t.name,
        "q": t.queue,
        "p": str(t.priority),
        "ra": repr(t.run_at.timestamp()),
        "ca": repr(t.created_at.timestamp()),
        "ua": repr(t.updated_at.timestamp()),
        "a": str(t.attempts),
        "mr": str(t.max_retries),
        "d": _static(t),
        "rq": dump_list(t.requires) if t.requires else None,
        "dp": dump(t.depends_on) if t.depends_on else None,
        "ik": t.idempotency_key,
        "wf": t.workflow_id,
        "w": t.worker_id,
        "le": None if t.lease_expires_at is None else repr(t.lease_expires_at.timestamp()),
        "sa": None if t.started_at is None else repr(t.started_at.timestamp()),
        "fa": None if t.finished_at is None else repr(t.finished_at.timestamp()),
        "r": None if t.result is None else dump(t.result),
        "e": None if t.error is None else t.error.model_dump_json(),
        "fr": None if t.failure_reason is None else t.failure_reason.value,
    }
    history = [dump([e.at.timestamp(), e.state.value, e.transition, e.worker_id, e.reason]) for e in t.history]
    return [t.id, dump([x for kv in fields.items() if kv[1] is not None for x in kv]), dump(history)]


def beat_record(state: WorkerState, active: int, processed: int, at: float) -> str:
    return dump([state.value, active, processed, at])


# --- reading -------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _policy(text: str) -> RetryPolicy:
    """Policies repeat across tasks: parse each once (the model is frozen, so sharing is safe)."""
    return RetryPolicy.model_validate_json(text)


def claimed_from(row: list[Any], pos: int, lease_expires_at: float) -> ClaimedTask:
    """The task at ``pos`` in ``claim.lua``'s flat reply (stride 11)."""
    static = json.loads(row[pos + 9])
    return ClaimedTask(
        id=row[pos],
        name=row[pos + 1],
        args=static["args"],
        queue=row[pos + 2],
        priority=int(row[pos + 3]),
        attempts=int(row[pos + 4]),
        max_retries=int(row[pos + 5]),
        timeout=static["timeout"],
        retry=_policy(static["retry"]),
        lease_token=row[pos + 8],
        lease_expires_at=lease_expires_at,
        run_at=float(row[pos + 6]),
        created_at=float(row[pos + 7]),
        labels=static["labels"],
        workflow_id=row[pos + 10] or None,
        headers=static.get("headers") or {},
    )


def _ts(value: str | None) -> float | None:
    return None if value is None else float(value)


def _history(raw: list[str]) -> list[HistoryEntry]:
    out = []
    for text in raw:
        at, state, transition, worker, reason = json.loads(text)
        out.append(
            HistoryEntry(at=to_dt(at), state=State(state), transition=transition, worker_id=worker, reason=reason)
        )
    return out


def task_from(task_id: str, h: dict[str, str], history: list[str]) -> Task:
    """The full model of one stored task (readers: get, listings, cancel)."""
    static = json.loads(h["d"])
    priority = int(h["p"])
    error = h.get("e")
    result = h.get("r")
    return Task(
        id=task_id,
        name=h["n"],
        args=static["args"],
        queue=h["q"],
        priority=priority,
        band=band_of(priority),
        state=State(h["s"]),
        labels=static["labels"],
        requires=static["requires"],
        run_at=to_dt(float(h["ra"])),
        depends_on=json.loads(h["dp"]) if "dp" in h else [],
        idempotency_key=h.get("ik"),
        max_retries=int(h["mr"]),
        timeout=static["timeout"],
        retry=_policy(static["retry"]),
        attempts=int(h["a"]),
        result=None if result is None else json.loads(result),
        error=None if error is None else TaskError.model_validate_json(error),
        failure_reason=FailureReason(h["fr"]) if "fr" in h else None,
        worker_id=h.get("w"),
        lease_expires_at=to_dt(_ts(h.get("le"))),
        created_at=to_dt(float(h["ca"])),
        started_at=to_dt(_ts(h.get("sa"))),
        finished_at=to_dt(_ts(h.get("fa"))),
        updated_at=to_dt(float(h["ua"])),
        history=_history(history),
        workflow_id=h.get("wf"),
        workflow_key=static.get("workflow_key"),
        headers=static.get("headers") or {},
    )


def worker_from(info: str, beat: str | None) -> WorkerInfo:
    worker = WorkerInfo.model_validate_json(info)
    if beat is None:
        return worker
    state, active, processed, at = json.loads(beat)
    return worker.model_copy(
        update={"state": WorkerState(state), "active": active, "processed": processed, "last_heartbeat_at": to_dt(at)}
    )
