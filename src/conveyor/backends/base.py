"""The backend contract: the domain operations every engine implements.

Conveyor's engines (``memory://``, ``sqlite://``, and later PostgreSQL, Redis and the
sharded ring) are interchangeable behind this seam. It speaks in operations on tasks
and workers, never in SQL, so an engine with no SQL at all can implement it. Each
operation takes one small params object, so adding a field breaks no signature, and
each is atomic: it either happens as a whole or not at all.

Rules every engine keeps (``tests/contract/`` checks them all, on every engine):

* Transitions come from ``conveyor.states.TRANSITIONS``; an engine never invents one.
  An operation that finds a task in a state its transition does not allow changes
  nothing (and raises ``InvalidStateTransition`` where the caller asked for that task
  by id, e.g. ``task_cancel``).
* Every transition appends a ``HistoryEntry`` and sets ``updated_at``.
* Claims are fenced. Each claim writes a fresh ``lease_token``; ``task_finish_many``,
  ``task_release`` and lease extension act only while the stored token equals the
  caller's and the task is ``running``. A stale token changes nothing and reports
  ``False`` / "lost".
* A claim takes ready tasks in order: ``priority`` descending, then ``run_at``, then
  ``id`` (ids are time-sortable, so FIFO). Before selecting, it promotes ``scheduled``
  and ``retrying`` tasks whose ``run_at`` has passed to ``pending`` (transition
  ``due``). It only takes tasks whose ``requires`` tags are a subset of the worker's
  tags, from the queues asked for, and at most ``limit`` of them. It increments
  ``attempts`` and sets ``started_at``, ``worker_id`` and ``lease_expires_at``.
* ``idempotency_key`` is unique per queue among stored tasks: a repeat submit
  returns the first task's id with ``created=False`` and writes nothing.
* ``max_length`` (per queue, from the submitter's config or ``queue_bounds``) bounds the number of
  unfinished tasks in a queue; a batch that would exceed it raises ``QueueFull`` and
  stores none of its tasks.
* A lapsed lease (``lease_expires_at`` < now while ``running``) returns the task to
  ``pending`` on ``task_reap_expired`` (the attempt still counts); if the task has
  no attempts left (``attempts > max_retries``) it goes to ``failed`` with reason
  ``retries_exhausted`` instead, so a task that kills its worker cannot loop forever.
* Dependencies are settled by the engine, never by a poller: a task with unfinished
  ``depends_on`` parents is stored ``waiting``; the step that completes its last
  parent moves it to ``pending`` (``deps_succeeded``), and a parent that fails or is
  cancelled fails it with ``dependency_failed``, down the graph, in the same step.
  An unknown parent id raises ``DependencyNotFound`` (a ``TaskNotFound``) and stores nothing.
* A task's history starts with an ``enqueue`` entry in its initial state. Leaving
  ``running`` clears ``worker_id``, ``lease_expires_at`` and the token (the history
  keeps who ran each attempt); success clears ``error``. Replay sets ``run_at`` to
  now and clears ``result``, ``error``, ``failure_reason`` and the start/finish times.

Admin listings, workers, flow control, the notification outbox, metric totals and migrations are
separate small protocols; ``Backend`` is their union, and ``conveyor.backends.open_backend(url)`` builds one from a URL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable
from urllib.parse import SplitResult, urlsplit

from conveyor.errors import InvalidInput
from conveyor.features.flow import FlowControl, QueueUpdate
from conveyor.models import (
    ClaimedTask,
    NewTask,
    Page,
    QueueInfo,
    Stats,
    Task,
    TaskError,
    WorkerInfo,
    WorkerState,
)
from conveyor.states import FailureReason, State

# --- params and results --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnqueueParams:
    """Tasks to store atomically. ``max_length`` maps queue name to its bound."""

    tasks: Sequence[NewTask]
    max_length: dict[str, int] = field(default_factory=dict)

    def plain(self) -> bool:
        """No idempotency key, bounded queue or dependency: nothing to look up, lock or
        check first, so these tasks may share one write with other submits' (``gather``)."""
        bounds = self.max_length
        return not any(t.idempotency_key is not None or t.depends_on or t.queue in bounds for t in self.tasks)


class Enqueued(NamedTuple):
    """Outcome of one submitted task: its id and whether this call created it (a
    named tuple: one per task of a bulk submit, and cheaper to build than a frozen
    dataclass)."""

    id: str
    state: State
    created: bool


def split_repeats(
    tasks: Sequence[NewTask], seen: dict[tuple[str, str], tuple[str, State]]
) -> tuple[list[tuple[NewTask, State]], list[Enqueued], dict[str, str]]:
    """Split off repeats of an idempotency key, stored (``seen``: ``(queue, key)`` to the
    stored task's id and state, as the engine found them) or earlier in this batch.

    Returns the tasks to insert with their initial state, every task's result in
    submit order, and the id of each repeat mapped to its first task's (a dependency
    on a repeat means that task). ``seen`` is extended with the batch's own keys.
    """
    fresh: list[tuple[NewTask, State]] = []
    results: list[Enqueued] = []
    alias: dict[str, str] = {}
    for t in tasks:
        state = t.initial_state
        if t.idempotency_key is not None:
            hit = seen.get((t.queue, t.idempotency_key))
            if hit is not None:
                results.append(Enqueued(hit[0], hit[1], False))
                alias[t.id] = hit[0]
                continue
            seen[(t.queue, t.idempotency_key)] = (t.id, state)
        fresh.append((t, state))
        results.append(Enqueued(t.id, state, True))
    return fresh, results, alias


@dataclass(frozen=True, slots=True)
class ClaimParams:
    """Claim up to ``limit`` ready tasks for ``worker_id``.

    ``queues`` empty means every queue. ``tags`` are the worker's tags: only tasks
    whose ``requires`` is a subset are taken.
    """

    worker_id: str
    limit: int
    lease_seconds: float
    queues: Sequence[str] = ()
    tags: frozenset[str] = frozenset()
    now: float | None = None
    aging_interval: float | None = None  # seconds per +1 of effective priority; None: off


@dataclass(frozen=True, slots=True)
class Claim:
    """Claimed tasks, and when the next ``scheduled``/``retrying`` task in the
    asked-for queues becomes due (``None`` if none), so a worker can sleep until then."""

    tasks: list[ClaimedTask]
    next_due: float | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """The end of one attempt, fenced by ``lease_token``.

    ``kind`` is the transition: ``complete`` (``result``), ``retry`` (``error`` and
    ``run_at``) or ``fail`` (``error`` and ``failure_reason``).
    """

    task_id: str
    lease_token: str
    kind: Literal["complete", "retry", "fail"]
    worker_id: str | None = None
    result: Any = None
    error: TaskError | None = None
    run_at: float | None = None
    failure_reason: FailureReason | None = None
    finished_at: float | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    task_id: str
    lease_token: str
    refund: bool = False  # on release: the attempt never started, do not count it


@dataclass(frozen=True, slots=True)
class ReleaseParams:
    """Give leases back (graceful shutdown): ``running`` -> ``pending``, fenced."""

    worker_id: str
    leases: Sequence[Lease]
    reason: str = "released on shutdown"


@dataclass(frozen=True, slots=True)
class ReapParams:
    now: float | None = None
    limit: int = 1000


@dataclass(frozen=True, slots=True)
class CancelParams:
    task_id: str
    reason: str = "cancelled"


@dataclass(frozen=True, slots=True)
class WaitParams:
    """Block until work may be ready in ``queues`` or ``timeout`` seconds pass."""

    queues: Sequence[str] = ()
    timeout: float = 1.0


@dataclass(frozen=True, slots=True)
class HeartbeatParams:
    """A worker's heartbeat: refresh its registry row and extend its leases.

    Returns the ids among ``leases`` that are no longer this worker's (cancelled,
    reaped, or re-claimed); the worker stops those attempts.
    """

    worker_id: str
    state: WorkerState
    leases: Sequence[Lease]
    lease_seconds: float
    active: int = 0
    processed: int = 0
    now: float | None = None


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """Filter for listings, DLQ replay and purge; ``None`` matches everything."""

    state: State | None = None
    queue: str | None = None
    name: str | None = None
    label: str | None = None
    ids: Sequence[str] | None = None


@dataclass(frozen=True, slots=True)
class ListParams:
    """Cursor pagination, newest first: ``cursor`` is the previous page's ``next_cursor``."""

    filter: TaskFilter = TaskFilter()
    limit: int = 50
    cursor: str | None = None


#: Task events an engine can record in its outbox (SPEC §9), in the step that causes them:
#: ``task.succeeded`` (the task reached ``succeeded``), ``task.failed`` (an attempt
#: ended in failure: the task left ``running`` for ``retrying`` or ``failed``),
#: ``task.dead_lettered`` (the task reached ``failed``, whatever the reason),
#: ``task.cancelled`` (the task reached ``cancelled``) and ``workflow.finished`` (the
#: last unfinished task of a workflow finished; once per workflow).
OUTBOX_EVENTS = ("task.succeeded", "task.failed", "task.dead_lettered", "task.cancelled", "workflow.finished")


def split_url(url: str) -> SplitResult:
    """``urlsplit`` with its lazy checks run now, so a bad host or port is bad input, not a crash at connect."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # parsed on access
    except ValueError as exc:  # an unclosed IPv6 '[', a port that is no number or past 65535
        raise InvalidInput(f"invalid URL {url!r}: {exc}") from None
    return parts


def check_bound(queue: str, max_length: int | None) -> None:
    """``InvalidInput`` unless ``max_length`` is None or a whole number of tasks from 1
    (to 2**31 - 1, what every engine stores)."""
    if max_length is None:
        return
    if isinstance(max_length, bool) or not isinstance(max_length, int) or not 1 <= max_length < 2**31:
        raise InvalidInput(
            f"max_length of queue {queue!r} must be a whole number from 1 to {2**31 - 1}, got {max_length!r}"
        )


def check_events(events: frozenset[str]) -> None:
    """``InvalidInput`` naming any event that is not in ``OUTBOX_EVENTS``."""
    unknown = events - set(OUTBOX_EVENTS)
    if unknown:
        raise InvalidInput(f"unknown notification events {sorted(unknown)}; known: {', '.join(OUTBOX_EVENTS)}")


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One recorded event, as a deliverer claims it.

    ``id`` increases in recording order (per engine; per shard on a ring). ``state``,
    ``attempt``, ``result`` and ``error`` (JSON text, ``None`` if none) are the task's
    at the transition, copied into the event so delivery never reads the task.
    ``done`` names the targets that already have it, so a retry after a partial
    failure skips them; ``deliveries`` counts the claims.
    """

    id: str
    event: str
    task_id: str
    workflow_id: str | None
    queue: str
    name: str
    state: State
    attempt: int
    at: float
    deliveries: int = 0
    done: tuple[str, ...] = ()
    result: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxClaimParams:
    """Claim up to ``limit`` due events for ``lease_seconds``: another deliverer takes
    them only after the lease lapses (at-least-once, so a crash loses nothing)."""

    limit: int = 100
    lease_seconds: float = 30.0
    now: float | None = None


@dataclass(frozen=True, slots=True)
class OutboxSettle:
    """The end of one delivery round: ``retry_at`` ``None`` drops the event (every
    target has it, or it is given up on); otherwise it is due again then, with
    ``done`` remembered."""

    id: str
    retry_at: float | None = None
    done: tuple[str, ...] = ()


# --- the protocols -------------------------------------------------------------------


@runtime_checkable
class TaskStore(Protocol):
    """The hot path: what submitters and workers call."""

    async def task_enqueue_many(self, params: EnqueueParams) -> list[Enqueued]:
        """Store new tasks in one atomic step (see idempotency and ``max_length`` above)."""
        ...

    async def task_claim(self, params: ClaimParams) -> Claim:
        """Lease up to ``params.limit`` ready tasks in priority order (one atomic step)."""
        ...

    async def task_finish_many(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """Record attempt outcomes; ``False`` where the lease was stale (nothing written)."""
        ...

    async def task_release(self, params: ReleaseParams) -> int:
        """Return still-held leases to ``pending``; the count released."""
        ...

    async def task_reap_expired(self, params: ReapParams) -> list[str]:
        """Recover tasks whose lease lapsed; returns their ids."""
        ...

    async def task_cancel(self, params: CancelParams) -> Task:
        """Cancel a non-terminal task (a running one loses its lease at once)."""
        ...

    async def task_get(self, task_id: str) -> Task:
        """The task with its history; ``TaskNotFound`` if unknown."""
        ...

    async def task_wait(self, params: WaitParams) -> None:
        """Return when new work may be ready, or after ``params.timeout``."""
        ...


@runtime_checkable
class AdminStore(Protocol):
    """Listings, the dead-letter queue and statistics: what operators call."""

    async def task_list(self, params: ListParams) -> Page: ...

    async def task_replay(self, flt: TaskFilter) -> int:
        """Replay ``failed`` tasks matching ``flt``: back to ``pending``, attempts reset."""
        ...

    async def task_purge(self, flt: TaskFilter) -> int:
        """Delete ``failed`` tasks matching ``flt`` (the state filter is forced)."""
        ...

    async def queue_list(self) -> list[QueueInfo]: ...

    async def stats(self) -> Stats: ...


@runtime_checkable
class WorkerRegistry(Protocol):
    async def worker_register(self, info: WorkerInfo) -> None: ...

    async def worker_heartbeat(self, params: HeartbeatParams) -> list[str]:
        """Refresh the worker and its leases; returns the ids of leases it lost."""
        ...

    async def worker_deregister(self, worker_id: str) -> None:
        """Mark the worker ``offline`` (clean exit)."""
        ...

    async def worker_list(self) -> list[WorkerInfo]:
        """All known workers; one whose heartbeat is older than ``offline_after`` reads ``offline``."""
        ...


@runtime_checkable
class Lifecycle(Protocol):
    url: str
    offline_after: float

    async def open(self) -> None:
        """Connect (and migrate unless the URL/config disabled it)."""
        ...

    async def close(self) -> None: ...

    async def migrate(self) -> list[str]:
        """Apply pending schema migrations; returns the names applied."""
        ...


@runtime_checkable
class WorkflowStore(Protocol):
    """Workflows (DAGs submitted at once): their nodes are tasks carrying ``workflow_id``
    and ``workflow_key``, stored by ``task_enqueue_many`` in one atomic step."""

    async def workflow_get(self, workflow_id: str) -> list[Task]:
        """Every task of the workflow, oldest id first; an empty list if unknown."""
        ...


@runtime_checkable
class FlowStore(Protocol):
    """Flow control kept in the engine, cluster-wide (rules in ``conveyor.features.flow``).

    ``task_claim`` skips paused queues, spends rate-limit tokens, respects concurrency
    limits (running tasks per queue and per task name, counted inside the claim) and
    breakers, and orders by aged priority when ``ClaimParams.aging_interval`` is set,
    all in its one atomic step; ``Claim.next_due`` is then also the time a blocked
    rate or breaker allows more. ``task_finish_many`` updates the breakers of the task
    names it finishes in the same step. With no controls stored, a claim costs what it
    did without them.
    """

    async def queue_update(self, update: QueueUpdate) -> FlowControl:
        """Change one queue's or task name's settings (``InvalidInput``: nothing stored)."""
        ...

    async def flow_list(self) -> list[FlowControl]:
        """Every stored control, by kind then name."""
        ...

    async def task_ahead(self, task_id: str) -> int:
        """How many ``pending`` tasks of its queue come before this one in claim order
        (without aging); 0 if it is not pending."""
        ...

    async def queue_bound_set(self, queue: str, max_length: int | None) -> None:
        """Store a queue's ``max_length`` set at run time (``PATCH /queues``), or remove
        it (None). Submitters read these (``queue_bounds``) and pass them, with their
        config's, in ``EnqueueParams.max_length``, where the engine enforces them."""
        ...

    async def queue_bounds(self) -> dict[str, int]:
        """Every stored ``max_length``, by queue."""
        ...


@runtime_checkable
class RestoreStore(Protocol):
    """``conveyor import``: storing exported tasks as they were."""

    async def task_restore(self, tasks: Sequence[Task]) -> int:
        """Store tasks exactly as given (``conveyor import`` of an export, maybe from
        another engine): state, attempts, history, result, error, times and all, with
        every index and count kept. Not a transition: nothing is recorded in the
        history or the outbox. A task whose id, or whose queue's idempotency key, is
        already stored is skipped; returns how many were stored. A ``waiting`` task is
        linked to those of its parents that are stored and unfinished, so their
        outcomes settle it. A ``running`` task keeps its lease expiry but no lease
        token, so no worker can finish it: the reaper returns it to ``pending`` once
        that time has passed, as after a crash."""
        ...


@runtime_checkable
class OutboxStore(Protocol):
    """The durable outbox behind notifications (``conveyor.notify``).

    Subscriptions are cluster-wide and stored in the engine: once ``task.succeeded``
    is subscribed, every transition into ``succeeded``, by any operation of any
    process, records an event in the same atomic step as the transition. Nothing is
    recorded for events nobody subscribed to, so the outbox costs nothing when off.
    """

    async def outbox_subscribe(self, events: frozenset[str]) -> None:
        """Record exactly these events (names from ``OUTBOX_EVENTS``) from now on;
        events already recorded stay."""
        ...

    async def outbox_claim(self, params: OutboxClaimParams) -> list[OutboxEvent]:
        """Due events, oldest first, leased to the caller."""
        ...

    async def outbox_settle(self, settles: Sequence[OutboxSettle]) -> None:
        """Drop delivered events and reschedule the others, in one step."""
        ...

    async def outbox_size(self) -> int:
        """How many events wait for delivery."""
        ...


#: Totals an engine adds to itself, in the step that causes them: dead letters purged
#: (deleted) and replayed (moved out of ``failed``). With them, ``/metrics`` derives
#: monotonic ``conveyor_tasks_submitted_total`` and ``conveyor_tasks_finished_total``
#: from the task counts, though those two operations take tasks away.
PURGED_KEY = '["purged",[],""]'
REPLAYED_KEY = '["replayed",[],""]'


@runtime_checkable
class MetricStore(Protocol):
    """Cluster-wide metric totals (``conveyor.metrics``): each worker adds what it measured
    since its last flush, and ``GET /metrics`` on any API instance reads the sums. Totals
    only grow by what is added, so they outlive the workers that measured them, and any
    number of processes may add at once. Keys are opaque strings (at most 1,000
    characters) the caller encodes; the engine never parses them, and adds to two of
    its own (``PURGED_KEY``, ``REPLAYED_KEY``)."""

    async def metrics_add(self, deltas: Mapping[str, float]) -> None:
        """Add each value to the total stored under its key (a new key starts at 0), all
        in one atomic step; an empty mapping writes nothing."""
        ...

    async def metrics_read(self) -> dict[str, float]:
        """Every stored total, by key."""
        ...


@runtime_checkable
class Backend(
    TaskStore,
    AdminStore,
    WorkerRegistry,
    WorkflowStore,
    FlowStore,
    RestoreStore,
    OutboxStore,
    MetricStore,
    Lifecycle,
    Protocol,
):
    """Everything an engine provides."""
