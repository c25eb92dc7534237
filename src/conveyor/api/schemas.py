"""Request and response bodies the API adds around the domain models of ``conveyor.models``.

``TaskSpec`` (the ``POST /tasks`` body), ``Task``, ``Page``, ``Stats``, ``QueueInfo``
and ``WorkerInfo`` are used as they are; these are only the envelopes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from conveyor.features.flow import MAX_LIMIT
from conveyor.models import QUEUE_PATTERN, Task, TaskSpec

MAX_BATCH = 1000


class BatchRequest(BaseModel):
    """``POST /tasks/batch``: every task is stored, or none is."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[TaskSpec] = Field(min_length=1, max_length=MAX_BATCH)


class BatchResult(BaseModel):
    """The stored tasks in request order; ``created[i]`` is false for an idempotent repeat."""

    items: list[Task]
    created: list[bool]


class DlqFilter(BaseModel):
    """Which dead letters ``POST /dlq/replay`` acts on; no field means all of them."""

    model_config = ConfigDict(extra="forbid")

    queue: str | None = Field(default=None, pattern=QUEUE_PATTERN)
    name: str | None = Field(default=None, max_length=200)
    ids: list[str] | None = Field(default=None, max_length=10_000)


class Replayed(BaseModel):
    replayed: int


class Purged(BaseModel):
    purged: int


class QueuePatch(BaseModel):
    """``PATCH /queues/{name}``: pause or resume, flow limits and the queue's bound; absent
    fields stay as they are and ``null`` removes a limit (JSON merge-patch style; a
    ``max_length`` removed falls back to config's ``queues.NAME.max_length``)."""

    model_config = ConfigDict(extra="forbid")

    paused: bool | None = None
    rate_limit: str | None = Field(default=None, max_length=50, examples=["100/s"])
    concurrency: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    max_length: int | None = Field(default=None, ge=1, le=2**31 - 1)


class Check(BaseModel):
    status: Literal["ok", "warn", "fail"]
    detail: str = ""


class Health(BaseModel):
    """``GET /health``: the overall verdict and each check that led to it."""

    status: Literal["healthy", "degraded", "unhealthy"]
    checks: dict[str, Check]
