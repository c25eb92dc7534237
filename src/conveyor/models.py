"""The data Conveyor stores and returns (SPEC §1), as pydantic models.

``TaskSpec`` is what a caller submits; ``Task`` is the stored record that ``get``,
the CLI's ``--json`` and ``GET /tasks/{id}`` return. ``ClaimedTask`` is the slim
record a claim hands to a worker: the hot path avoids building full models.
Times are timezone-aware UTC datetimes in models and epoch seconds inside engines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from conveyor.errors import InvalidInput
from conveyor.priority import Band, parse_priority
from conveyor.retry import RetryPolicy
from conveyor.states import FailureReason, State

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.:\-]{0,199}$"
QUEUE_PATTERN = r"^[A-Za-z0-9_.:\-]{1,100}$"


def to_dt(ts: float | None) -> datetime | None:
    """Epoch seconds to an aware UTC datetime (``None`` stays ``None``)."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def to_ts(dt: datetime | None) -> float | None:
    return None if dt is None else dt.timestamp()


class TaskError(BaseModel):
    """Why an attempt failed: exception type, message, traceback, and the classification."""

    type: str
    message: str
    traceback: str | None = None
    retryable: bool = True


class HistoryEntry(BaseModel):
    """One state transition: when, into which state, by which worker, and why."""

    at: AwareDatetime
    state: State
    transition: str
    worker_id: str | None = None
    reason: str | None = None


class TaskSpec(BaseModel):
    """A submit request: the fields a caller sets on a task. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    args: dict[str, Any] = Field(default_factory=dict)
    queue: str = Field(default="default", pattern=QUEUE_PATTERN)
    priority: int | None = None
    labels: list[str] = Field(default_factory=list, max_length=100)
    requires: list[str] = Field(default_factory=list, max_length=100)
    run_at: AwareDatetime | None = None
    delay: float | None = Field(default=None, ge=0, le=10 * 365 * 86400)
    depends_on: list[str] = Field(default_factory=list, max_length=10_000)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=500)
    max_retries: int | None = Field(default=None, ge=0, le=1000)
    timeout: float | None = Field(default=None, gt=0, le=7 * 86400)
    retry: RetryPolicy | None = None

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, v: Any) -> int | None:
        try:
            return None if v is None else parse_priority(v)
        except InvalidInput as exc:  # a ValueError, so pydantic reports it with the rest
            raise ValueError(exc.message) from exc

    @field_validator("labels", "requires")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        for tag in v:
            if not tag or len(tag) > 200:
                raise ValueError("labels and tags must be 1-200 characters")
        return _texts(v)

    @field_validator("depends_on")
    @classmethod
    def _ids(cls, v: list[str]) -> list[str]:
        return _texts(v)


def _texts(values: list[str]) -> list[str]:
    """Refuse a lone UTF-16 surrogate (JSON's ``"\\ud800"``): Python holds it, but no
    engine can store it, and it would fail a whole group commit instead of one submit."""
    for text in values:
        if not text.isascii():
            try:
                text.encode()
            except UnicodeEncodeError:
                raise ValueError(f"{text!r} is not valid Unicode text (a lone surrogate)") from None
    return values


@dataclass(slots=True)
class NewTask:
    """A fully resolved submit, ready for ``task_enqueue_many`` (times in epoch seconds)."""

    id: str
    name: str
    args: dict[str, Any]
    queue: str
    priority: int
    run_at: float
    created_at: float
    labels: list[str] = field(default_factory=list)
    requires: list[str] = field(default_factory=list)
    depends_on: list[str] = field(default_factory=list)
    idempotency_key: str | None = None
    max_retries: int = 3
    timeout: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    workflow_id: str | None = None  # the workflow this task is a node of (``conveyor.workflows``)
    workflow_key: str | None = None  # its node key there
    headers: dict[str, str] = field(default_factory=dict)  # trace context, request id (``conveyor.tracing``)

    @property
    def initial_state(self) -> State:
        if self.depends_on:
            return State.WAITING
        return State.SCHEDULED if self.run_at > self.created_at + 1e-3 else State.PENDING


@dataclass(slots=True)
class ClaimedTask:
    """What a worker needs to run one attempt; ``lease_token`` fences its outcome."""

    id: str
    name: str
    args: dict[str, Any]
    queue: str
    priority: int
    attempts: int
    max_retries: int
    timeout: float | None
    retry: RetryPolicy
    lease_token: str
    lease_expires_at: float
    run_at: float
    created_at: float
    labels: list[str] = field(default_factory=list)
    workflow_id: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


class Task(BaseModel):
    """A stored task as every reader sees it (``GET /tasks/{id}``, ``--json``)."""

    id: str
    name: str
    args: dict[str, Any]
    queue: str
    priority: int
    band: Band
    state: State
    labels: list[str]
    requires: list[str]
    run_at: AwareDatetime
    depends_on: list[str]
    idempotency_key: str | None
    max_retries: int
    timeout: float | None
    retry: RetryPolicy
    attempts: int
    result: Any = None
    error: TaskError | None = None
    failure_reason: FailureReason | None = None
    worker_id: str | None = None
    lease_expires_at: AwareDatetime | None = None
    created_at: AwareDatetime
    started_at: AwareDatetime | None = None
    finished_at: AwareDatetime | None = None
    updated_at: AwareDatetime
    history: list[HistoryEntry] = Field(default_factory=list)
    workflow_id: str | None = None
    workflow_key: str | None = None
    headers: dict[str, str] = Field(
        default_factory=dict, description="Set by Conveyor at submit: the trace context and the HTTP request id."
    )

    @property
    def terminal(self) -> bool:
        return self.state in (State.SUCCEEDED, State.FAILED, State.CANCELLED)


class WorkerState(StrEnum):
    """Worker states."""

    IDLE = "idle"
    BUSY = "busy"
    STOPPING = "stopping"
    OFFLINE = "offline"


class WorkerInfo(BaseModel):
    """A registered worker. ``state`` reads ``offline`` once heartbeats stop."""

    id: str
    host: str
    pid: int
    queues: list[str]
    tags: list[str]
    concurrency: int
    pool: str = "async"
    version: str = ""
    state: WorkerState = WorkerState.IDLE
    active: int = 0
    processed: int = 0
    started_at: AwareDatetime
    last_heartbeat_at: AwareDatetime


class QueueInfo(BaseModel):
    """Depth of one queue: counts per state and, for ready work, per band."""

    name: str
    counts: dict[str, int] = Field(default_factory=dict)
    pending_by_band: dict[str, int] = Field(default_factory=dict)
    paused: bool = False
    max_length: int | None = None

    @classmethod
    def empty(cls, name: str) -> QueueInfo:
        """A queue with every state and band at zero (engines fill in what they count)."""
        return cls(name=name, counts={s.value: 0 for s in State}, pending_by_band={b.value: 0 for b in Band})


#: Seconds counted by ``Stats.finished_last_minute``.
FINISHED_WINDOW = 60.0


class Stats(BaseModel):
    """Cluster-wide counts (``conveyor stats``, ``GET /stats``)."""

    counts: dict[str, int]
    queues: list[QueueInfo]
    workers: dict[str, int]
    dlq_size: int
    finished_last_minute: int
    throughput_per_second: float
    open_breakers: list[str] = Field(default_factory=list)

    @classmethod
    def collect(
        cls, queues: list[QueueInfo], workers: list[WorkerInfo], finished: int, open_breakers: list[str]
    ) -> Stats:
        """The figures every engine derives alike from its queue depths, its registry
        and the tasks it finished in the last ``FINISHED_WINDOW`` seconds."""
        counts = {s.value: sum(q.counts.get(s.value, 0) for q in queues) for s in State}
        by_state = {s.value: 0 for s in WorkerState}
        for worker in workers:
            by_state[worker.state.value] += 1
        return cls(
            counts=counts,
            queues=queues,
            workers=by_state,
            dlq_size=counts[State.FAILED.value],
            finished_last_minute=finished,
            throughput_per_second=finished / FINISHED_WINDOW,
            open_breakers=open_breakers,
        )


class Page(BaseModel):
    """One page of a cursor-paginated listing; pass ``next_cursor`` to get the next."""

    items: list[Task]
    next_cursor: str | None = None
