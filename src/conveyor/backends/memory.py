"""The in-memory engine: the readable reference implementation of the backend contract.

Stores live in this process, keyed by the URL's name (``memory://name``; ``memory://``
is ``default``), so every ``MemoryBackend`` on one URL (say one per thread or event
loop) shares them. One ``threading.Lock`` makes each operation atomic; nothing
persists. Every state change goes through ``_Store.transition``, which asks
``conveyor.states`` whether it is allowed and appends the history entry.

Each queue keeps two heaps with lazy deletion: ``ready`` (``pending`` tasks by
``(-priority, run_at, id)``) and ``delayed`` (``scheduled``/``retrying`` tasks by
``(run_at, id)``). An entry whose task has moved on since it was pushed is dropped
when it reaches the top, so no operation has to search a heap.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import secrets
import threading
import time
from bisect import bisect_left, insort
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from conveyor import states
from conveyor.backends.base import (
    PURGED_KEY,
    REPLAYED_KEY,
    CancelParams,
    Claim,
    ClaimParams,
    Enqueued,
    EnqueueParams,
    HeartbeatParams,
    ListParams,
    OutboxClaimParams,
    OutboxEvent,
    OutboxSettle,
    Outcome,
    ReapParams,
    ReleaseParams,
    TaskFilter,
    WaitParams,
    check_bound,
    check_events,
)
from conveyor.errors import DependencyNotFound, InvalidInput, QueueFull, TaskExists, TaskNotFound
from conveyor.features.flow import (
    ClaimGate,
    FlowControl,
    Key,
    QueueUpdate,
    apply_update,
    claim_key,
    open_breakers,
    record_outcome,
    running_keys,
)
from conveyor.models import (
    FINISHED_WINDOW,
    ClaimedTask,
    HistoryEntry,
    NewTask,
    Page,
    QueueInfo,
    Stats,
    Task,
    TaskError,
    WorkerInfo,
    WorkerState,
    to_ts,
)
from conveyor.priority import Band, band_of
from conveyor.retry import RetryPolicy
from conveyor.states import FailureReason, State

_DELAYED = frozenset({State.SCHEDULED, State.RETRYING})


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _json_copy(value: Any, what: str) -> Any:
    """A deep copy through JSON, so this engine hands back what a SQL engine would."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} must be JSON-serializable: {exc}") from exc


@dataclass(slots=True, eq=False)
class _Row:
    """One stored task (engine times are epoch seconds)."""

    id: str
    name: str
    args: dict[str, Any]
    queue: str
    priority: int
    state: State
    labels: list[str]
    requires: list[str]
    run_at: float
    depends_on: list[str]
    idempotency_key: str | None
    max_retries: int
    timeout: float | None
    retry: RetryPolicy
    created_at: float
    updated_at: float
    attempts: int = 0
    result: Any = None
    error: TaskError | None = None
    failure_reason: FailureReason | None = None
    worker_id: str | None = None
    lease_token: str | None = None
    lease_expires_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    history: list[HistoryEntry] = field(default_factory=list)
    workflow_id: str | None = None
    workflow_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def new(cls, t: NewTask) -> _Row:
        return cls(
            id=t.id,
            name=t.name,
            args=_json_copy(t.args, "args"),
            queue=t.queue,
            priority=t.priority,
            state=t.initial_state,
            labels=list(t.labels),
            requires=list(t.requires),
            run_at=t.run_at,
            depends_on=list(t.depends_on),
            idempotency_key=t.idempotency_key,
            max_retries=t.max_retries,
            timeout=t.timeout,
            retry=t.retry,
            created_at=t.created_at,
            updated_at=t.created_at,
            workflow_id=t.workflow_id,
            workflow_key=t.workflow_key,
            headers=dict(t.headers),
        )

    @classmethod
    def from_task(cls, t: Task) -> _Row:
        """A restored task (``task_restore``): every field as exported, no lease token."""
        return cls(
            id=t.id,
            name=t.name,
            args=_json_copy(t.args, "args"),
            queue=t.queue,
            priority=t.priority,
            state=t.state,
            labels=list(t.labels),
            requires=list(t.requires),
            run_at=t.run_at.timestamp(),
            depends_on=list(t.depends_on),
            idempotency_key=t.idempotency_key,
            max_retries=t.max_retries,
            timeout=t.timeout,
            retry=t.retry,
            created_at=t.created_at.timestamp(),
            updated_at=t.updated_at.timestamp(),
            attempts=t.attempts,
            result=_json_copy(t.result, "result"),
            error=None if t.error is None else t.error.model_copy(),
            failure_reason=t.failure_reason,
            worker_id=t.worker_id,
            lease_expires_at=to_ts(t.lease_expires_at),
            started_at=to_ts(t.started_at),
            finished_at=to_ts(t.finished_at),
            history=[entry.model_copy() for entry in t.history],
            workflow_id=t.workflow_id,
            workflow_key=t.workflow_key,
            headers=dict(t.headers),
        )

    @property
    def ready_key(self) -> tuple[int, float, str]:
        return (-self.priority, self.run_at, self.id)

    def matches(self, flt: TaskFilter, ids: set[str] | None) -> bool:
        return (
            (flt.state is None or self.state == flt.state)
            and (flt.queue is None or self.queue == flt.queue)
            and (flt.name is None or self.name == flt.name)
            and (flt.label is None or flt.label in self.labels)
            and (ids is None or self.id in ids)
        )

    def to_task(self) -> Task:
        """A snapshot the caller may keep or mutate without touching the store."""
        return Task(
            id=self.id,
            name=self.name,
            args=_json_copy(self.args, "args"),
            queue=self.queue,
            priority=self.priority,
            band=band_of(self.priority),
            state=self.state,
            labels=list(self.labels),
            requires=list(self.requires),
            run_at=_dt(self.run_at),
            depends_on=list(self.depends_on),
            idempotency_key=self.idempotency_key,
            max_retries=self.max_retries,
            timeout=self.timeout,
            retry=self.retry,
            attempts=self.attempts,
            result=_json_copy(self.result, "result"),
            error=None if self.error is None else self.error.model_copy(),
            failure_reason=self.failure_reason,
            worker_id=self.worker_id,
            lease_expires_at=None if self.lease_expires_at is None else _dt(self.lease_expires_at),
            created_at=_dt(self.created_at),
            started_at=None if self.started_at is None else _dt(self.started_at),
            finished_at=None if self.finished_at is None else _dt(self.finished_at),
            updated_at=_dt(self.updated_at),
            history=[entry.model_copy() for entry in self.history],
            workflow_id=self.workflow_id,
            workflow_key=self.workflow_key,
            headers=dict(self.headers),
        )

    def to_claimed(self) -> ClaimedTask:
        assert self.lease_token is not None and self.lease_expires_at is not None
        return ClaimedTask(
            id=self.id,
            name=self.name,
            args=_json_copy(self.args, "args"),
            queue=self.queue,
            priority=self.priority,
            attempts=self.attempts,
            max_retries=self.max_retries,
            timeout=self.timeout,
            retry=self.retry,
            lease_token=self.lease_token,
            lease_expires_at=self.lease_expires_at,
            run_at=self.run_at,
            created_at=self.created_at,
            labels=list(self.labels),
            workflow_id=self.workflow_id,
            headers=dict(self.headers),
        )


@dataclass(slots=True, eq=False)
class _Waiter:
    """One pending ``task_wait`` call, woken from any thread through its loop."""

    loop: asyncio.AbstractEventLoop
    event: asyncio.Event
    queues: frozenset[str]


class _Store:
    """The state behind one ``memory://name``. Callers hold ``lock`` (see ``atomic``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tasks: dict[str, _Row] = {}
        self.order: list[str] = []  # every id, sorted: listings walk it newest first
        self.ready: defaultdict[str, list[tuple[int, float, str]]] = defaultdict(list)
        self.delayed: defaultdict[str, list[tuple[float, str]]] = defaultdict(list)
        self.running: dict[str, _Row] = {}
        self.idempotency: dict[tuple[str, str], str] = {}
        self.dependents: defaultdict[str, set[str]] = defaultdict(set)  # dep id -> waiting ids
        self.workflows: defaultdict[str, list[str]] = defaultdict(list)  # workflow id -> node ids
        self.counts: Counter[tuple[str, State]] = Counter()
        self.pending_bands: Counter[tuple[str, Band]] = Counter()
        self.flow: dict[Key, FlowControl] = {}  # flow controls (conveyor.features.flow)
        self.running_by: Counter[Key] = Counter()  # running tasks per ("queue"|"task", name)
        self.workers: dict[str, WorkerInfo] = {}
        self.waiters: set[_Waiter] = set()
        self.touched: set[str] = set()  # queues that gained ready or delayed work
        self.subscribed: frozenset[str] = frozenset()  # outbox events recorded
        self.outbox: dict[int, OutboxEvent] = {}  # by number, which increases: oldest first
        self.outbox_due: dict[int, float] = {}  # number -> when it may be claimed (again)
        self.outbox_seq = 0
        self.workflow_events: dict[str, int] = {}  # workflow id -> its undelivered event
        self.metric_totals: dict[str, float] = {}  # MetricStore
        self.bounds: dict[str, int] = {}  # max_length set at run time, by queue

    @contextmanager
    def atomic(self) -> Iterator[_Store]:
        """Hold the lock for one operation, then wake the waiters it concerns."""
        with self.lock:
            try:
                yield self
            finally:
                self._wake()

    def _wake(self) -> None:
        if self.touched:
            for waiter in self.waiters:
                if not waiter.queues or waiter.queues & self.touched:
                    with suppress(RuntimeError):  # that loop is closed: nobody to wake
                        waiter.loop.call_soon_threadsafe(waiter.event.set)
            self.touched.clear()

    # --- transitions -----------------------------------------------------------------

    def transition(
        self, row: _Row, name: str, now: float, *, worker_id: str | None = None, reason: str | None = None
    ) -> None:
        """Move ``row`` along transition ``name`` (checked against the table) and record it."""
        old, new = row.state, states.check(row.state, name, row.id)
        self._count(row, -1)
        row.state = new
        self._count(row, +1)
        row.updated_at = now
        row.history.append(HistoryEntry(at=_dt(now), state=new, transition=name, worker_id=worker_id, reason=reason))
        if old is State.WAITING:
            for dep in row.depends_on:
                self.dependents.get(dep, set()).discard(row.id)
        if old is State.RUNNING:
            self.running.pop(row.id, None)
            self.running_by[("queue", row.queue)] -= 1
            self.running_by[("task", row.name)] -= 1
        if new is State.RUNNING:
            self.running[row.id] = row
            self.running_by[("queue", row.queue)] += 1
            self.running_by[("task", row.name)] += 1
        else:
            row.worker_id = row.lease_token = row.lease_expires_at = None
        self._index(row)
        if new in states.TERMINAL:
            row.finished_at = now
        if self.subscribed:
            self._record(row, old, new, now)

    def _record(self, row: _Row, old: State, new: State, now: float) -> None:
        """Outbox events this transition causes (``OUTBOX_EVENTS`` says which)."""
        subs = self.subscribed
        if new is State.SUCCEEDED and "task.succeeded" in subs:
            self._add_event("task.succeeded", row, now)
        if old is State.RUNNING and new in (State.RETRYING, State.FAILED) and "task.failed" in subs:
            self._add_event("task.failed", row, now)
        if new is State.FAILED and "task.dead_lettered" in subs:
            self._add_event("task.dead_lettered", row, now)
        if new is State.CANCELLED and "task.cancelled" in subs:
            self._add_event("task.cancelled", row, now)
        wid = row.workflow_id
        if (
            wid is not None
            and new in states.TERMINAL
            and "workflow.finished" in subs
            and wid not in self.workflow_events
            and all(self.tasks[i].state in states.TERMINAL for i in self.workflows[wid] if i in self.tasks)
        ):
            self.workflow_events[wid] = self._add_event("workflow.finished", row, now)

    def _add_event(self, event: str, row: _Row, now: float) -> int:
        n = self.outbox_seq = self.outbox_seq + 1
        self.outbox[n] = OutboxEvent(
            f"{n:020d}",
            event,
            row.id,
            row.workflow_id,
            row.queue,
            row.name,
            row.state,
            row.attempts,
            now,
            result=None if row.result is None else json.dumps(row.result),
            error=None if row.error is None else row.error.model_dump_json(),
        )
        self.outbox_due[n] = now
        return n

    def outbox_claim(self, params: OutboxClaimParams) -> list[OutboxEvent]:
        now = time.time() if params.now is None else params.now
        out: list[OutboxEvent] = []
        for n, ev in self.outbox.items():
            if len(out) >= params.limit:
                break
            if self.outbox_due[n] <= now:
                self.outbox_due[n] = now + params.lease_seconds
                self.outbox[n] = claimed = replace(ev, deliveries=ev.deliveries + 1)
                out.append(claimed)
        return out

    def outbox_settle(self, settles: Sequence[OutboxSettle]) -> None:
        for settle in settles:
            n = int(settle.id)
            ev = self.outbox.get(n)
            if ev is None:
                continue
            if settle.retry_at is None:
                del self.outbox[n], self.outbox_due[n]
                if ev.event == "workflow.finished" and ev.workflow_id is not None:
                    self.workflow_events.pop(ev.workflow_id, None)
            else:
                self.outbox[n] = replace(ev, done=settle.done)
                self.outbox_due[n] = settle.retry_at

    def move(
        self, row: _Row, name: str, now: float, *, worker_id: str | None = None, reason: str | None = None
    ) -> None:
        """``transition``, then settle the tasks waiting on ``row`` if it just finished."""
        self.transition(row, name, now, worker_id=worker_id, reason=reason)
        if row.state in states.TERMINAL:
            self._settle_dependents(row, now)

    def _count(self, row: _Row, delta: int) -> None:
        self.counts[(row.queue, row.state)] += delta
        if row.state is State.PENDING:
            self.pending_bands[(row.queue, band_of(row.priority))] += delta

    def _index(self, row: _Row) -> None:
        """Push a heap entry for a row that just became ready or delayed."""
        if row.state is State.PENDING:
            heapq.heappush(self.ready[row.queue], row.ready_key)
            self.touched.add(row.queue)
        elif row.state in _DELAYED:
            heapq.heappush(self.delayed[row.queue], (row.run_at, row.id))
            self.touched.add(row.queue)

    def _settle_dependents(self, done: _Row, now: float) -> None:
        """Wake the tasks waiting on ``done``, or fail them (and theirs, down the graph)."""
        stack = [done]
        while stack:
            parent = stack.pop()
            for child_id in sorted(self.dependents.pop(parent.id, set())):
                child = self.tasks.get(child_id)
                if child is None or child.state is not State.WAITING:
                    continue
                if parent.state is State.SUCCEEDED:
                    if all(self._succeeded(dep) for dep in child.depends_on):
                        self.transition(child, "deps_succeeded", now)
                else:
                    child.failure_reason = FailureReason.DEPENDENCY_FAILED
                    reason = f"dependency {parent.id} {parent.state.value}"
                    self.transition(child, "dependency_failed", now, reason=reason)
                    stack.append(child)

    def _succeeded(self, task_id: str) -> bool:
        row = self.tasks.get(task_id)
        return row is not None and row.state is State.SUCCEEDED

    def held(self, task_id: str, lease_token: str) -> _Row | None:
        """The row if ``lease_token`` still holds it (running, same token), else ``None``."""
        row = self.tasks.get(task_id)
        if row is None or row.state is not State.RUNNING or row.lease_token != lease_token:
            return None
        return row

    def unfinished(self, queue: str) -> int:
        return sum(self.counts[(queue, state)] for state in states.ACTIVE)

    # --- enqueue ---------------------------------------------------------------------

    def enqueue(self, params: EnqueueParams) -> list[Enqueued]:
        """Plan the whole batch, check it, and only then write it (all or nothing)."""
        now = time.time()
        existing: dict[int, str] = {}  # batch position -> the task its idempotency key names
        alias: dict[str, str] = {}  # id of a deduplicated submit -> that task's id
        keys: dict[tuple[str, str], str] = {}  # keys first used in this batch
        planned: dict[str, tuple[_Row, NewTask]] = {}
        for pos, t in enumerate(params.tasks):
            key = None if t.idempotency_key is None else (t.queue, t.idempotency_key)
            first = None if key is None else (self.idempotency.get(key) or keys.get(key))
            if first is not None:
                existing[pos] = alias[t.id] = first
                continue
            if t.id in self.tasks or t.id in planned:
                raise TaskExists(f"task {t.id} already exists", task_id=t.id)
            if key is not None:
                keys[key] = t.id
            planned[t.id] = (_Row.new(t), t)
        for row, t in planned.values():
            row.depends_on = [alias.get(dep, dep) for dep in t.depends_on]
            for dep in row.depends_on:
                if dep not in self.tasks and dep not in planned:
                    raise DependencyNotFound(f"task {row.id} depends on unknown task {dep}", task_id=dep)
        rows = [row for row, _ in planned.values()]
        self._check_room(rows, params.max_length)
        for row in rows:
            self._insert(row)
        for row in rows:
            if row.state is State.WAITING:
                self._link(row, now)
        out = []
        for pos, t in enumerate(params.tasks):
            task_id = existing.get(pos, t.id)
            out.append(Enqueued(id=task_id, state=self.tasks[task_id].state, created=pos not in existing))
        return out

    def restore(self, tasks: Sequence[Task]) -> int:
        """``task_restore``: rows exactly as exported, indexed and counted as they stand."""
        rows: list[_Row] = []
        for task in tasks:
            key = None if task.idempotency_key is None else (task.queue, task.idempotency_key)
            if task.id in self.tasks or (key is not None and key in self.idempotency):
                continue
            row = _Row.from_task(task)
            self.tasks[row.id] = row
            insort(self.order, row.id)
            if key is not None:
                self.idempotency[key] = row.id
            if row.workflow_id is not None:
                insort(self.workflows[row.workflow_id], row.id)
            self._count(row, +1)
            self._index(row)
            if row.state is State.RUNNING:
                self.running[row.id] = row
                self.running_by[("queue", row.queue)] += 1
                self.running_by[("task", row.name)] += 1
            rows.append(row)
        for row in rows:
            if row.state is State.WAITING:
                for dep in row.depends_on:
                    parent = self.tasks.get(dep)
                    if parent is not None and parent.state not in states.TERMINAL:
                        self.dependents[dep].add(row.id)
        return len(rows)

    def _check_room(self, rows: Sequence[_Row], max_length: dict[str, int]) -> None:
        added = Counter(row.queue for row in rows)
        for queue, n in added.items():
            bound = max_length.get(queue)
            if bound is not None and self.unfinished(queue) + n > bound:
                raise QueueFull(
                    f"queue {queue!r} is full ({bound} unfinished tasks at most)",
                    queue=queue,
                    max_length=bound,
                )

    def _insert(self, row: _Row) -> None:
        self.tasks[row.id] = row
        insort(self.order, row.id)
        if row.idempotency_key is not None:
            self.idempotency[(row.queue, row.idempotency_key)] = row.id
        if row.workflow_id is not None:
            insort(self.workflows[row.workflow_id], row.id)
        row.history.append(HistoryEntry(at=_dt(row.created_at), state=row.state, transition="enqueue"))
        self._count(row, +1)
        self._index(row)

    def _link(self, row: _Row, now: float) -> None:
        """Resolve a new ``waiting`` task against dependencies that may have settled."""
        deps = [self.tasks[dep] for dep in row.depends_on]
        lost = next((d for d in deps if d.state in (State.FAILED, State.CANCELLED)), None)
        if lost is not None:
            row.failure_reason = FailureReason.DEPENDENCY_FAILED
            self.move(row, "dependency_failed", now, reason=f"dependency {lost.id} {lost.state.value}")
        elif all(d.state is State.SUCCEEDED for d in deps):
            self.transition(row, "deps_succeeded", now)
        else:
            for dep in deps:
                if dep.state is not State.SUCCEEDED:
                    self.dependents[dep.id].add(row.id)

    # --- claim -----------------------------------------------------------------------

    def claim(self, params: ClaimParams) -> Claim:
        now = time.time() if params.now is None else params.now
        queues = list(params.queues) or sorted(self.ready.keys() | self.delayed.keys())
        for queue in queues:
            self._promote_due(queue, now)
        heads: list[tuple[tuple[int, float, str], str]] = []  # best ready entry of each queue
        if self.flow or params.aging_interval:
            return self._claim_controlled(params, queues, now)
        for queue in queues:
            self._push_head(heads, queue)
        taken: list[_Row] = []
        passed: list[tuple[tuple[int, float, str], str]] = []  # ready, but needs other tags
        while heads and len(taken) < params.limit:
            key, queue = heapq.heappop(heads)
            row = self.tasks[key[2]]
            if params.tags.issuperset(row.requires):
                taken.append(row)
            else:
                passed.append((key, queue))
            self._push_head(heads, queue)
        for key, queue in passed + heads:
            heapq.heappush(self.ready[queue], key)
        return Claim(tasks=self._lease(taken, params, now), next_due=self.next_due(queues))

    def _lease(self, taken: list[_Row], params: ClaimParams, now: float) -> list[ClaimedTask]:
        for row in taken:
            self.transition(row, "claim", now, worker_id=params.worker_id)
            row.attempts += 1
            row.started_at = now
            row.worker_id = params.worker_id
            row.lease_token = secrets.token_hex(16)
            row.lease_expires_at = now + params.lease_seconds
        return [row.to_claimed() for row in taken]

    def _claim_controlled(self, params: ClaimParams, queues: list[str], now: float) -> Claim:
        """The claim with flow controls or aging: every ready task of the open queues,
        in (aged) claim order, offered to the gate. Simple rather than fast: this
        engine is the readable reference, the SQL engines look at index heads only."""
        running = {key: self.running_by[key] for key in running_keys(self.flow.values())}
        gate = ClaimGate(self.flow, running, now)
        ready = {row.id: row for row in self._ready_rows(queues) if row.queue not in gate.blocked_queues}
        order = sorted(ready.values(), key=lambda r: claim_key(r.priority, r.run_at, r.id, now, params.aging_interval))
        taken: list[_Row] = []
        for row in order:
            if len(taken) >= params.limit:
                break
            if params.tags.issuperset(row.requires) and gate.take(row.queue, row.name):
                taken.append(row)
        gate.commit()  # the controls are this store's own: updated in place
        due = self.next_due(queues)
        if gate.wake is not None:
            due = gate.wake if due is None else min(due, gate.wake)
        return Claim(tasks=self._lease(taken, params, now), next_due=due)

    def _ready_rows(self, queues: Sequence[str]) -> Iterator[_Row]:
        """The ``pending`` rows of ``queues`` (a heap may hold stale or repeated entries)."""
        for queue in queues:
            for key in self.ready.get(queue, ()):
                row = self.tasks.get(key[2])
                if row is not None and row.state is State.PENDING and row.ready_key == key:
                    yield row

    def ahead(self, task_id: str) -> int:
        row = self.get(task_id)
        if row.state is not State.PENDING:
            return 0
        ids = {r.id for r in self._ready_rows([row.queue]) if r.ready_key < row.ready_key}
        return len(ids)

    def queue_update(self, update: QueueUpdate) -> FlowControl:
        control = apply_update(self.flow.get((update.kind, update.name)), update)
        if control.inert:
            self.flow.pop(control.key, None)
        else:
            self.flow[control.key] = control
        if update.kind == "queue":
            self.touched.add(update.name)  # a resumed queue or a looser limit: claim again
        else:
            self.touched |= set(self.ready)
        return control.model_copy()

    def _promote_due(self, queue: str, now: float) -> None:
        heap = self.delayed.get(queue)
        while heap and heap[0][0] <= now:
            run_at, task_id = heapq.heappop(heap)
            row = self.tasks.get(task_id)
            if row is not None and row.state in _DELAYED and row.run_at == run_at:
                self.transition(row, "due", now)

    def _push_head(self, heads: list[tuple[tuple[int, float, str], str]], queue: str) -> None:
        """Move the best live entry of ``queue``'s ready heap onto ``heads``."""
        heap = self.ready.get(queue)
        while heap:
            key = heapq.heappop(heap)
            row = self.tasks.get(key[2])
            if row is not None and row.state is State.PENDING and row.ready_key == key:
                heapq.heappush(heads, (key, queue))
                return

    def next_due(self, queues: Sequence[str]) -> float | None:
        """When the earliest ``scheduled``/``retrying`` task in ``queues`` becomes due."""
        due: float | None = None
        for queue in queues or list(self.delayed):
            heap = self.delayed.get(queue)
            while heap:
                run_at, task_id = heap[0]
                row = self.tasks.get(task_id)
                if row is not None and row.state in _DELAYED and row.run_at == run_at:
                    due = run_at if due is None else min(due, run_at)
                    break
                heapq.heappop(heap)  # stale: that task has moved on
        return due

    # --- outcomes and leases ---------------------------------------------------------

    def finish_many(self, outcomes: Sequence[Outcome]) -> list[bool]:
        results = [_json_copy(o.result, "result") for o in outcomes]  # may refuse the batch
        return [self._finish(outcome, result) for outcome, result in zip(outcomes, results, strict=True)]

    def _finish(self, outcome: Outcome, result: Any) -> bool:
        row = self.held(outcome.task_id, outcome.lease_token)
        if row is None:
            return False
        now = time.time() if outcome.finished_at is None else outcome.finished_at
        worker_id = outcome.worker_id or row.worker_id
        breaker = self.flow.get(("task", row.name))
        if breaker is not None:
            record_outcome(breaker, outcome.kind == "complete", now)
        if outcome.kind == "complete":
            row.result = result
            row.error = None
            self.move(row, "complete", now, worker_id=worker_id)
        elif outcome.kind == "retry":
            row.error = outcome.error
            row.run_at = now if outcome.run_at is None else outcome.run_at
            reason = None if outcome.error is None else f"{outcome.error.type}: {outcome.error.message}"
            self.move(row, "retry", now, worker_id=worker_id, reason=reason)
        else:
            row.error = outcome.error
            row.failure_reason = outcome.failure_reason or FailureReason.PERMANENT_ERROR
            self.move(row, "fail", now, worker_id=worker_id, reason=row.failure_reason.value)
        return True

    def release(self, params: ReleaseParams) -> int:
        now = time.time()
        released = 0
        for lease in params.leases:
            row = self.held(lease.task_id, lease.lease_token)
            if row is None:
                continue
            if lease.refund:
                row.attempts = max(0, row.attempts - 1)
            self.move(row, "release", now, worker_id=params.worker_id, reason=params.reason)
            released += 1
        return released

    def reap(self, params: ReapParams) -> list[str]:
        now = time.time() if params.now is None else params.now
        lapsed = sorted(
            (expires, row.id)
            for row in self.running.values()
            if (expires := row.lease_expires_at) is not None and expires < now
        )[: params.limit]
        for _, task_id in lapsed:
            row = self.tasks[task_id]
            holder = row.worker_id
            if row.attempts > row.max_retries:
                row.failure_reason = FailureReason.RETRIES_EXHAUSTED
                row.error = TaskError(
                    type="LeaseExpired",
                    message=f"lease of worker {holder} expired on attempt {row.attempts}",
                )
                self.move(row, "lease_expired_final", now, worker_id=holder, reason="lease expired")
            else:
                self.move(row, "lease_expired", now, worker_id=holder, reason="lease expired")
        return [task_id for _, task_id in lapsed]

    def cancel(self, params: CancelParams) -> Task:
        row = self.get(params.task_id)
        self.move(row, "cancel", time.time(), reason=params.reason)
        return row.to_task()

    def get(self, task_id: str) -> _Row:
        row = self.tasks.get(task_id)
        if row is None:
            raise TaskNotFound(f"task {task_id} not found", task_id=task_id)
        return row

    # --- admin -----------------------------------------------------------------------

    def select(self, flt: TaskFilter) -> list[_Row]:
        ids = None if flt.ids is None else set(flt.ids)
        return [self.tasks[i] for i in self.order if self.tasks[i].matches(flt, ids)]

    def list_page(self, params: ListParams) -> Page:
        limit = max(1, params.limit)
        end = len(self.order) if params.cursor is None else bisect_left(self.order, params.cursor)
        ids = None if params.filter.ids is None else set(params.filter.ids)
        found: list[_Row] = []
        for pos in range(end - 1, -1, -1):
            row = self.tasks[self.order[pos]]
            if row.matches(params.filter, ids):
                found.append(row)
                if len(found) > limit:
                    break
        page = found[:limit]
        more = len(found) > limit
        return Page(items=[row.to_task() for row in page], next_cursor=page[-1].id if more else None)

    def replay(self, flt: TaskFilter) -> int:
        now = time.time()
        rows = self.select(replace(flt, state=State.FAILED))
        for row in rows:
            row.attempts = 0
            row.error = row.failure_reason = row.result = None
            row.started_at = row.finished_at = None
            row.run_at = now
            self.move(row, "replay", now, reason="replayed")
        return len(rows)

    def purge(self, flt: TaskFilter) -> int:
        rows = self.select(replace(flt, state=State.FAILED))
        for row in rows:
            self._count(row, -1)
            del self.tasks[row.id]
            self.order.pop(bisect_left(self.order, row.id))
            self.dependents.pop(row.id, None)
            if row.idempotency_key is not None:
                self.idempotency.pop((row.queue, row.idempotency_key), None)
        return len(rows)

    def queue_list(self) -> list[QueueInfo]:
        names = {queue for (queue, _), n in self.counts.items() if n > 0}
        names |= {name for kind, name in self.flow if kind == "queue"}
        return [
            QueueInfo(
                name=name,
                counts={state.value: self.counts[(name, state)] for state in State},
                pending_by_band={band.value: self.pending_bands[(name, band)] for band in Band},
                paused=(c := self.flow.get(("queue", name))) is not None and c.paused,
            )
            for name in sorted(names)
        ]

    def stats(self, offline_after: float) -> Stats:
        since = time.time() - FINISHED_WINDOW
        finished = sum(1 for row in self.tasks.values() if row.finished_at is not None and row.finished_at >= since)
        workers = self.worker_list(offline_after)
        return Stats.collect(self.queue_list(), workers, finished, open_breakers(self.flow.values()))

    # --- workers ---------------------------------------------------------------------

    def heartbeat(self, params: HeartbeatParams) -> list[str]:
        now = time.time() if params.now is None else params.now
        worker = self.workers.get(params.worker_id)
        if worker is not None:
            self.workers[params.worker_id] = worker.model_copy(
                update={
                    "state": params.state,
                    "active": params.active,
                    "processed": params.processed,
                    "last_heartbeat_at": _dt(now),
                }
            )
        lost = []
        for lease in params.leases:
            row = self.held(lease.task_id, lease.lease_token)
            if row is None:
                lost.append(lease.task_id)
            else:
                row.lease_expires_at = now + params.lease_seconds
        return lost

    def worker_list(self, offline_after: float) -> list[WorkerInfo]:
        cutoff = time.time() - offline_after
        out = []
        for worker in sorted(self.workers.values(), key=lambda w: w.id):
            silent = worker.last_heartbeat_at.timestamp() < cutoff
            state = WorkerState.OFFLINE if silent else worker.state
            out.append(worker.model_copy(update={"state": state}))
        return out


_STORES: dict[str, _Store] = {}
_STORES_LOCK = threading.Lock()


def _store_for(url: str) -> _Store:
    """The process-wide store ``url`` names (``memory://name``; bare ``memory://`` is ``default``)."""
    rest = url.split("://", 1)[1] if "://" in url else ""
    name = rest.split("?", 1)[0].strip("/") or "default"
    with _STORES_LOCK:
        store = _STORES.get(name)
        if store is None:
            store = _STORES[name] = _Store()
        return store


class MemoryBackend:
    """The ``memory://`` engine: every rule of the contract, in plain Python, in one process.

    For tests and as the reference the other engines are read against; several
    instances on one URL share their store, and nothing survives the process.
    """

    def __init__(self, url: str = "memory://", *, offline_after: float = 30.0) -> None:
        self.url = url
        self.offline_after = offline_after
        self._store = _store_for(url)

    # --- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """The store outlives the instance, like a database outlives a connection."""

    async def migrate(self) -> list[str]:
        return []

    # --- task store ------------------------------------------------------------------

    async def task_enqueue_many(self, params: EnqueueParams) -> list[Enqueued]:
        with self._store.atomic() as store:
            return store.enqueue(params)

    async def task_claim(self, params: ClaimParams) -> Claim:
        with self._store.atomic() as store:
            return store.claim(params)

    async def task_finish_many(self, outcomes: Sequence[Outcome]) -> list[bool]:
        with self._store.atomic() as store:
            return store.finish_many(outcomes)

    async def task_release(self, params: ReleaseParams) -> int:
        with self._store.atomic() as store:
            return store.release(params)

    async def task_reap_expired(self, params: ReapParams) -> list[str]:
        with self._store.atomic() as store:
            return store.reap(params)

    async def task_cancel(self, params: CancelParams) -> Task:
        with self._store.atomic() as store:
            return store.cancel(params)

    async def task_get(self, task_id: str) -> Task:
        with self._store.atomic() as store:
            return store.get(task_id).to_task()

    async def task_wait(self, params: WaitParams) -> None:
        """Sleep until another call adds ready or delayed work to ``params.queues``,
        the next delayed task there falls due, or ``params.timeout`` passes."""
        waiter = _Waiter(asyncio.get_running_loop(), asyncio.Event(), frozenset(params.queues))
        with self._store.atomic() as store:
            due = store.next_due(params.queues)
            store.waiters.add(waiter)
        timeout = params.timeout if due is None else min(params.timeout, max(0.0, due - time.time()))
        try:
            await asyncio.wait_for(waiter.event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            with self._store.lock:
                self._store.waiters.discard(waiter)

    # --- admin -----------------------------------------------------------------------

    async def task_list(self, params: ListParams) -> Page:
        with self._store.atomic() as store:
            return store.list_page(params)

    async def workflow_get(self, workflow_id: str) -> list[Task]:
        with self._store.atomic() as store:
            ids = store.workflows.get(workflow_id, [])
            return [store.tasks[i].to_task() for i in ids if i in store.tasks]

    async def task_replay(self, flt: TaskFilter) -> int:
        with self._store.atomic() as store:
            n = store.replay(flt)
            store.metric_totals[REPLAYED_KEY] = store.metric_totals.get(REPLAYED_KEY, 0.0) + n
            return n

    async def task_restore(self, tasks: Sequence[Task]) -> int:
        with self._store.atomic() as store:
            return store.restore(tasks)

    async def task_purge(self, flt: TaskFilter) -> int:
        with self._store.atomic() as store:
            n = store.purge(flt)
            store.metric_totals[PURGED_KEY] = store.metric_totals.get(PURGED_KEY, 0.0) + n
            return n

    async def queue_list(self) -> list[QueueInfo]:
        with self._store.atomic() as store:
            return store.queue_list()

    async def stats(self) -> Stats:
        with self._store.atomic() as store:
            return store.stats(self.offline_after)

    # --- flow control ----------------------------------------------------------------

    async def queue_update(self, update: QueueUpdate) -> FlowControl:
        with self._store.atomic() as store:
            return store.queue_update(update)

    async def flow_list(self) -> list[FlowControl]:
        with self._store.atomic() as store:
            return [store.flow[key].model_copy() for key in sorted(store.flow)]

    async def task_ahead(self, task_id: str) -> int:
        with self._store.atomic() as store:
            return store.ahead(task_id)

    # --- outbox ----------------------------------------------------------------------

    async def outbox_subscribe(self, events: frozenset[str]) -> None:
        check_events(events)
        with self._store.atomic() as store:
            store.subscribed = frozenset(events)

    async def outbox_claim(self, params: OutboxClaimParams) -> list[OutboxEvent]:
        with self._store.atomic() as store:
            return store.outbox_claim(params)

    async def outbox_settle(self, settles: Sequence[OutboxSettle]) -> None:
        with self._store.atomic() as store:
            store.outbox_settle(settles)

    async def outbox_size(self) -> int:
        with self._store.atomic() as store:
            return len(store.outbox)

    # --- queue bounds ----------------------------------------------------------------

    async def queue_bound_set(self, queue: str, max_length: int | None) -> None:
        check_bound(queue, max_length)
        with self._store.atomic() as store:
            if max_length is None:
                store.bounds.pop(queue, None)
            else:
                store.bounds[queue] = max_length

    async def queue_bounds(self) -> dict[str, int]:
        with self._store.atomic() as store:
            return dict(store.bounds)

    # --- metric totals ---------------------------------------------------------------

    async def metrics_add(self, deltas: Mapping[str, float]) -> None:
        with self._store.atomic() as store:
            totals = store.metric_totals
            for key, value in deltas.items():
                totals[key] = totals.get(key, 0.0) + value

    async def metrics_read(self) -> dict[str, float]:
        with self._store.atomic() as store:
            return dict(store.metric_totals)

    # --- workers ---------------------------------------------------------------------

    async def worker_register(self, info: WorkerInfo) -> None:
        with self._store.atomic() as store:
            store.workers[info.id] = info.model_copy()

    async def worker_heartbeat(self, params: HeartbeatParams) -> list[str]:
        with self._store.atomic() as store:
            return store.heartbeat(params)

    async def worker_deregister(self, worker_id: str) -> None:
        with self._store.atomic() as store:
            worker = store.workers.get(worker_id)
            if worker is not None:
                store.workers[worker_id] = worker.model_copy(update={"state": WorkerState.OFFLINE})

    async def worker_list(self) -> list[WorkerInfo]:
        with self._store.atomic() as store:
            return store.worker_list(self.offline_after)


__all__ = ["MemoryBackend"]
