"""Why a task is not running: one decision, shared by ``conveyor explain`` and the API.

``Conveyor.explain`` gathers the facts from the engine (the task, its parents' states,
the flow controls, the live workers, the number of tasks ahead of it) and ``explain``
turns them into an ``Explanation``: a ``reason`` code, one sentence, and the fields
behind it. The checks follow the claim path's order: a claim skips a paused queue
first, then spends rate tokens, then concurrency room, then breakers, then matches
worker tags; whatever is left waits its turn.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, Field

from conveyor.backends.base import Backend, ListParams, TaskFilter
from conveyor.errors import TaskNotFound
from conveyor.features.flow import BreakerState, FlowControl, Key, tokens_at
from conveyor.models import Task, WorkerInfo, WorkerState, to_dt
from conveyor.states import State

Reason = Literal[
    "finished",
    "running",
    "waiting_on_parents",
    "scheduled",
    "retry_backoff",
    "queue_paused",
    "rate_limited",
    "concurrency_limited",
    "breaker_open",
    "no_worker_with_tags",
    "no_workers",
    "queued",
]


class Explanation(BaseModel):
    """Why a task is (not) running, in one sentence (``message``) and in fields."""

    task_id: str
    state: State
    reason: Reason
    message: str
    waiting_on: list[str] = Field(default_factory=list)  # parents not yet succeeded
    run_at: AwareDatetime | None = None
    rate_limited_until: AwareDatetime | None = None
    rate_limit: str | None = None
    concurrency_limit: int | None = None
    breaker_open_until: AwareDatetime | None = None
    queue_paused: bool = False
    missing_tags: list[str] = Field(default_factory=list)  # required tags no live worker has
    no_worker_with_tags: bool = False
    ahead: int | None = None  # pending tasks before it in its queue's claim order
    worker_id: str | None = None


def _out(task: Task, reason: Reason, message: str, **fields: Any) -> Explanation:
    return Explanation(task_id=task.id, state=task.state, reason=reason, message=message, **fields)


def _when(ts: float | None) -> str:
    dt = to_dt(ts)
    return "" if dt is None else dt.strftime("%Y-%m-%d %H:%M:%S UTC")


def explain(
    task: Task,
    *,
    parents: Mapping[str, State],
    controls: Iterable[FlowControl],
    running: Mapping[Key, int],
    workers: Sequence[WorkerInfo],
    ahead: int,
    now: float | None = None,
) -> Explanation:
    """The reason ``task`` is where it is (see the module docstring for the order)."""
    now = time.time() if now is None else now
    if task.terminal:
        return _out(task, "finished", f"Task {task.id} has finished: it {task.state.value}.")
    if task.state is State.RUNNING:
        until = _when(task.lease_expires_at.timestamp() if task.lease_expires_at else None)
        message = f"Task {task.id} is running on worker {task.worker_id} (lease until {until})."
        return _out(task, "running", message, worker_id=task.worker_id)
    if task.state is State.WAITING:
        waiting = [pid for pid in task.depends_on if parents.get(pid) is not State.SUCCEEDED]
        message = f"Task {task.id} waits for {len(waiting)} parent task(s) to succeed: {', '.join(waiting)}."
        return _out(task, "waiting_on_parents", message, waiting_on=waiting)
    if task.state in (State.SCHEDULED, State.RETRYING) and task.run_at.timestamp() > now:
        reason: Reason = "scheduled" if task.state is State.SCHEDULED else "retry_backoff"
        what = "is scheduled" if reason == "scheduled" else "waits out its retry backoff"
        message = f"Task {task.id} {what} until {_when(task.run_at.timestamp())}."
        return _out(task, reason, message, run_at=task.run_at)
    return _pending(task, {c.key: c for c in controls}, running, workers, ahead, now)


def _pending(
    task: Task,
    controls: Mapping[Key, FlowControl],
    running: Mapping[Key, int],
    workers: Sequence[WorkerInfo],
    ahead: int,
    now: float,
) -> Explanation:
    queue, name = controls.get(("queue", task.queue)), controls.get(("task", task.name))
    if queue is not None and queue.paused:
        message = f"Task {task.id} is ready, but queue {task.queue!r} is paused."
        return _out(task, "queue_paused", message, queue_paused=True)
    for c in (queue, name):
        rate = None if c is None else c.rate
        if c is not None and rate is not None and tokens_at(c, rate, now) < 1:
            until = max(now, c.refilled_at) + (1 - tokens_at(c, rate, now)) / rate.refill
            what = f"queue {c.name!r}" if c.kind == "queue" else f"task {c.name!r}"
            message = f"Task {task.id} is rate-limited by {what} ({c.rate_limit}) until {_when(until)}."
            return _out(
                task,
                "rate_limited",
                message,
                rate_limited_until=to_dt(until),
                rate_limit=c.rate_limit,
            )
    for c in (queue, name):
        if c is not None and c.concurrency is not None and running.get(c.key, 0) >= c.concurrency:
            what = f"queue {c.name!r}" if c.kind == "queue" else f"task {c.name!r}"
            message = f"Task {task.id} waits: {what} already runs {c.concurrency} task(s), its concurrency limit."
            return _out(task, "concurrency_limited", message, concurrency_limit=c.concurrency)
    if name is not None and name.breaker is not BreakerState.CLOSED:
        opened = name.opened_until if name.breaker is BreakerState.OPEN else None
        when = f"until {_when(opened)}" if opened and opened > now else "until its probe task succeeds"
        message = f"Task {task.id} is held: the circuit breaker of {task.name!r} is open {when}."
        return _out(task, "breaker_open", message, breaker_open_until=to_dt(opened))
    live = [w for w in workers if w.state not in (WorkerState.OFFLINE, WorkerState.STOPPING)]
    serving = [w for w in live if not w.queues or task.queue in w.queues]
    if not serving:
        message = f"Task {task.id} is ready, but no live worker takes queue {task.queue!r}."
        return _out(task, "no_workers", message, ahead=ahead)
    need = set(task.requires)
    if need and not any(need <= set(w.tags) for w in serving):
        have: set[str] = set().union(*(set(w.tags) for w in serving))
        missing = sorted(need - have) or sorted(need)
        message = f"Task {task.id} needs a worker with tags {', '.join(sorted(need))}; no live worker has them all."
        return _out(
            task,
            "no_worker_with_tags",
            message,
            missing_tags=missing,
            no_worker_with_tags=True,
            ahead=ahead,
        )
    message = f"Task {task.id} is ready; {ahead} task(s) are ahead of it in queue {task.queue!r}."
    return _out(task, "queued", message, ahead=ahead)


async def explain_task(backend: Backend, task_id: str, now: float | None = None) -> Explanation:
    """Gather the facts from ``backend`` (reads only) and ``explain`` them."""
    task = await backend.task_get(task_id)
    parents: dict[str, State] = {}
    if task.state is State.WAITING:
        for parent in task.depends_on:
            with contextlib.suppress(TaskNotFound):  # purged: it never succeeds
                parents[parent] = (await backend.task_get(parent)).state
    controls = await backend.flow_list()
    running: dict[Key, int] = {}
    for c in controls:
        if c.concurrency is not None and c.key in (("queue", task.queue), ("task", task.name)):
            flt = TaskFilter(state=State.RUNNING, **{"queue" if c.kind == "queue" else "name": c.name})
            page = await backend.task_list(ListParams(flt, limit=c.concurrency))
            running[c.key] = len(page.items)
    workers = await backend.worker_list() if task.state is State.PENDING else []
    ahead = await backend.task_ahead(task_id) if task.state is State.PENDING else 0
    return explain(task, parents=parents, controls=controls, running=running, workers=workers, ahead=ahead, now=now)


__all__ = ["Explanation", "Reason", "explain", "explain_task"]
