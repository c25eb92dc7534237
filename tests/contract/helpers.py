"""Shared helpers for the contract suite: engine URLs, task factories, short-hand calls."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

import pytest

from conveyor.backends import SCHEMES
from conveyor.backends.base import (
    Backend,
    CancelParams,
    ClaimParams,
    Enqueued,
    EnqueueParams,
    ListParams,
    Outcome,
    TaskFilter,
)
from conveyor.ids import new_id
from conveyor.models import ClaimedTask, NewTask, Task, TaskError, WorkerInfo
from conveyor.retry import RetryPolicy
from conveyor.states import FailureReason, State
from tests import services

#: URL templates every contract test runs against; ``{name}`` is unique per test and
#: ``{tmp}`` is a fresh temporary directory. The server engines join when their
#: server answers (``tests/services.py`` starts or installs it); ``CONVEYOR_TEST_URLS``
#: adds more (comma-separated), e.g. ``postgresql://otherhost/db?schema={name}``.
BUILTIN_URLS = {
    "memory": "memory://{name}",
    "sqlite": "sqlite:///{tmp}/contract.db",
}


def engine_urls() -> dict[str, str]:
    """Engine -> URL template for every engine this run tests that processes can share
    (the sharded rings included; ``url_params`` adds the in-process ones)."""
    urls = dict(BUILTIN_URLS)
    if "postgresql" in SCHEMES and (pg := services.postgres_url()) is not None:
        urls["postgresql"] = pg
    if "redis" in SCHEMES and (rd := services.redis_url()) is not None:
        urls["redis"] = rd
    urls["shards-sqlite"] = "shards+sqlite:///{tmp}/s1.db,/{tmp}/s2.db"
    for engine in ("postgresql", "redis"):
        if engine in urls:
            urls[f"shards-{engine}"] = sharded_template(urls[engine])
    return urls


#: the sharded engine (``docs/sharding.md``) over in-process stores: contract tests only,
#: as worker subprocesses cannot share it (``engine_urls`` lists the shareable rings)
SHARDED_MEMORY_URL = "shards+memory://{name}-a,{name}-b,{name}-c"


def sharded_template(template: str, shards: int = 2) -> str:
    """A ring of ``shards`` stores on the server ``template`` names: ``{name}`` gets a suffix per shard."""
    scheme, rest = template.split("://", 1)
    return f"shards+{scheme}://" + ",".join(rest.replace("{name}", f"{{name}}_s{i}") for i in range(shards))


def single_store_only(url: str, why: str) -> None:
    """Skip on the sharded engine a rule that holds within one store but not ring-wide.

    Each use names the reason; ``docs/sharding.md`` lists them all ("Limits").
    """
    if url.lower().startswith("shards+"):
        pytest.skip(f"holds within one store, not across shards: {why}")


def url_params() -> list[Any]:
    """``pytest.param`` per engine URL template, id'd by engine."""
    params = [pytest.param(url, id=engine) for engine, url in engine_urls().items()]
    params.append(pytest.param(SHARDED_MEMORY_URL, id="shards-memory"))
    extra = [u.strip() for u in os.environ.get("CONVEYOR_TEST_URLS", "").split(",") if u.strip()]
    for i, url in enumerate(extra):
        params.append(pytest.param(url, id=f"{url.split(':', 1)[0]}-{i}"))
    return params


def unique_name() -> str:
    return "t" + uuid.uuid4().hex[:16]


def format_url(template: str, tmp: str) -> str:
    return template.format(name=unique_name(), tmp=tmp)


def new_task(**overrides: Any) -> NewTask:
    """A ready-to-enqueue task; ``delay`` (seconds) is a shortcut for ``run_at``."""
    now = time.time()
    delay = overrides.pop("delay", None)
    values: dict[str, Any] = {
        "id": new_id(),
        "name": "test.task",
        "args": {"n": 1},
        "queue": "default",
        "priority": 5,
        "run_at": now,
        "created_at": now,
        "max_retries": 3,
        "retry": RetryPolicy(),
    }
    if delay is not None:
        values["run_at"] = now + delay
    known = {f.name for f in fields(NewTask)}
    unknown = set(overrides) - known
    assert not unknown, f"new_task got unknown fields {unknown}"
    values.update(overrides)
    return NewTask(**values)


async def enqueue(backend: Backend, *tasks: NewTask, **max_length: int) -> list[Enqueued]:
    return await backend.task_enqueue_many(EnqueueParams(tasks=list(tasks), max_length=max_length))


async def submit(backend: Backend, **overrides: Any) -> str:
    """Enqueue one new task and return its id."""
    (done,) = await enqueue(backend, new_task(**overrides))
    return done.id


async def claim(
    backend: Backend,
    limit: int = 10,
    *,
    worker_id: str = "w1",
    lease_seconds: float = 30.0,
    queues: tuple[str, ...] = (),
    tags: frozenset[str] = frozenset(),
    now: float | None = None,
) -> list[ClaimedTask]:
    result = await backend.task_claim(
        ClaimParams(worker_id=worker_id, limit=limit, lease_seconds=lease_seconds, queues=queues, tags=tags, now=now)
    )
    return result.tasks


async def claim_one(backend: Backend, **kwargs: Any) -> ClaimedTask:
    tasks = await claim(backend, 1, **kwargs)
    assert len(tasks) == 1, f"expected one claimable task, got {len(tasks)}"
    return tasks[0]


def error(message: str = "boom", *, retryable: bool = True) -> TaskError:
    return TaskError(type="ValueError", message=message, traceback="Traceback ...", retryable=retryable)


def complete(claimed: ClaimedTask, result: Any = None, **kw: Any) -> Outcome:
    return Outcome(task_id=claimed.id, lease_token=claimed.lease_token, kind="complete", result=result, **kw)


def retry(claimed: ClaimedTask, run_at: float, **kw: Any) -> Outcome:
    kw.setdefault("error", error())
    return Outcome(task_id=claimed.id, lease_token=claimed.lease_token, kind="retry", run_at=run_at, **kw)


def fail(claimed: ClaimedTask, reason: Any, **kw: Any) -> Outcome:
    kw.setdefault("error", error(retryable=False))
    return Outcome(task_id=claimed.id, lease_token=claimed.lease_token, kind="fail", failure_reason=reason, **kw)


def worker_info(worker_id: str = "w1", **overrides: Any) -> WorkerInfo:
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "id": worker_id,
        "host": "host-a",
        "pid": 4242,
        "queues": ["default"],
        "tags": [],
        "concurrency": 4,
        "started_at": now,
        "last_heartbeat_at": now,
    }
    values.update(overrides)
    return WorkerInfo(**values)


async def all_tasks(backend: Backend, **flt: Any) -> list[Task]:
    """Every task matching the filter fields, newest first, across all pages."""
    out: list[Task] = []
    cursor = None
    while True:
        page = await backend.task_list(ListParams(filter=TaskFilter(**flt), limit=100, cursor=cursor))
        out.extend(page.items)
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor


async def task_in_state(backend: Backend, state: State, **overrides: Any) -> str:
    """A task brought to ``state`` through the public operations, alone in its own queue."""
    queue = "q-" + unique_name()
    if state is State.WAITING:
        parent = await submit(backend, queue=queue + "-parent", delay=3600)
        return await submit(backend, queue=queue, depends_on=[parent], **overrides)
    if state is State.SCHEDULED:
        return await submit(backend, queue=queue, delay=3600, **overrides)
    task_id = await submit(backend, queue=queue, **overrides)
    if state is State.CANCELLED:
        await backend.task_cancel(CancelParams(task_id))
    if state in (State.PENDING, State.CANCELLED):
        return task_id
    claimed = await claim_one(backend, queues=(queue,))
    outcome = {
        State.RUNNING: None,
        State.RETRYING: retry(claimed, time.time() + 3600),
        State.SUCCEEDED: complete(claimed, "done"),
        State.FAILED: fail(claimed, FailureReason.PERMANENT_ERROR),
    }[state]
    if outcome is not None:
        assert await backend.task_finish_many([outcome]) == [True]
    return task_id
