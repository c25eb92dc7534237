"""The Redis engine: ``redis://host:port/db?prefix=NAME`` (or ``rediss://`` for TLS).

Every state change is one Lua script (``lua/*.lua``, keyspace in ``lua/lib.lua``), so
it is atomic on the server: a submit, a claim or a batch of outcomes either happens
whole or not at all. Every key starts with the hash tag ``{prefix}`` (default
``{conveyor}``): a store lives in one Redis Cluster slot, so the scripts that span
queues (claims over several queues, dependencies between queues) stay legal on a
Cluster; spread load over several nodes with several prefixes or the sharded engine.

Time is the caller's clock (``now`` in the params, else ``time.time()``), like the
other engines; keep worker clocks in sync (NTP). Wake-ups come by pub/sub
(``redis_wake``); listings and statistics live in ``redis_admin``.

Connection errors become ``BackendUnavailable``. Operations are retried a few times
over about half a second first (a restarted server drops every pooled connection):
fenced ones (outcomes, releases, heartbeats, claims) are safe to repeat, and a
repeated submit recognises its own tasks by id instead of reporting them as duplicates.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

import conveyor.backends.redis_admin as admin
from conveyor.backends.base import (
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
from conveyor.backends.codec import dump, outbox_event
from conveyor.backends.redis_rows import beat_record, claimed_from, enqueue_args, parse_url
from conveyor.backends.redis_scripts import ChannelOptions, ScriptChannel, register_all
from conveyor.backends.redis_wake import Wakeups
from conveyor.errors import (
    BackendUnavailable,
    DependencyNotFound,
    InvalidInput,
    InvalidStateTransition,
    QueueFull,
    TaskExists,
    TaskNotFound,
)
from conveyor.features.flow import FlowControl, QueueUpdate
from conveyor.models import Page, QueueInfo, Stats, Task, WorkerInfo
from conveyor.states import FailureReason, State

T = TypeVar("T")

RETRY_DELAYS = (0.05, 0.15, 0.3)  # seconds between attempts when the connection fails
CLAIM_STRIDE = 11
_OUTAGE = (RedisConnectionError, RedisTimeoutError, OSError)
_STATES = {s.value: s for s in State}  # a dict read: cheaper than State(value) per task
#: error replies meaning "the server cannot take this now", not "this is wrong": out of
#: memory (noeviction), a replica after failover, a failed disk, a busy script, loading
_REFUSED = (OutOfMemoryError, ReadOnlyError, MasterDownError, ClusterDownError, TryAgainError)
_REFUSALS = ("MISCONF", "BUSY", "NOREPLICAS")  # replies redis-py has no class for


def _keepalive_options() -> dict[int, int]:
    """Declare a connection dead after ~25 s of silence, or 20 s of unacknowledged
    writes (Linux; other systems keep their defaults). A slow script does not trip
    them: the server's kernel still acknowledges and answers probes."""
    wanted = {"TCP_KEEPIDLE": 10, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 3, "TCP_USER_TIMEOUT": 20_000}
    return {getattr(socket, name): value for name, value in wanted.items() if hasattr(socket, name)}


class _HiredisConnection(aioredis.Connection):
    """redis-py's asyncio connection packs commands in Python (its sync one uses
    hiredis): scripts with dozens of arguments pack several times faster in C."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str) and " " in args[0]:  # "SCRIPT LOAD" and the like
            args = (*args[0].split(), *args[1:])
        return [hiredis.pack_command(args)]


class RedisBackend:
    """The ``redis://`` engine (see the module docstring)."""

    def __init__(self, url: str, *, offline_after: float = 30.0, auto_migrate: bool = True) -> None:
        self.url = url
        self.offline_after = offline_after
        self.auto_migrate = auto_migrate  # nothing to migrate: keys are created as they are used
        self._where = parse_url(url)
        self.tag = self._where.tag
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._channel: ScriptChannel | None = None
        self._wake: Wakeups | None = None
        self._seen = 0

    # --- plumbing ----------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            raise BackendUnavailable(
                f"the Redis backend for {self._where.where} is not open: call `await backend.open()`"
            )
        return self._client

    def key(self, *parts: str) -> str:
        return ":".join((self.tag, *parts))

    def _down(self, exc: BaseException) -> BackendUnavailable:
        if isinstance(exc, OutOfMemoryError):
            return BackendUnavailable(
                f"Redis at {self._where.where} is out of memory (maxmemory reached): nothing was written",
                url=self._where.where,
            )
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return BackendUnavailable(f"Redis at {self._where.where} is unavailable: {text}", url=self._where.where)

    async def guarded(self, call: Callable[[], Awaitable[T]], *, retry: bool = True) -> T:
        """Run ``call``; connection errors are retried (if ``retry``), then become ``BackendUnavailable``."""
        delays = RETRY_DELAYS if retry else ()
        for delay in (*delays, None):
            try:
                return await call()
            except _OUTAGE as exc:
                if delay is None:
                    raise self._down(exc) from exc
                await asyncio.sleep(delay)
            except ResponseError as exc:
                if not isinstance(exc, _REFUSED) and not str(exc).startswith(_REFUSALS):
                    raise  # a bug, not an outage
                if delay is None or isinstance(exc, OutOfMemoryError):
                    raise self._down(exc) from exc
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def run(self, name: str, args: Sequence[Any], *, retry: bool = True) -> Any:
        """Run script ``name`` with ``now`` already first in ``args`` (over the script
        channel when there is one, else through redis-py)."""
        channel = self._channel
        if channel is not None:
            return await self.guarded(lambda: channel.run(name, self.tag, args), retry=retry)
        script = self._scripts[name]
        return await self.guarded(lambda: script(keys=[self.tag], args=args, client=self.client), retry=retry)

    # --- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and check the server answers (``BackendUnavailable`` if not)."""
        if self._client is not None:
            return
        options: dict[str, Any] = {}
        if self._where.server.startswith("redis://"):  # rediss:// keeps redis-py's TLS connection class
            options["connection_class"] = _HiredisConnection
        client = aioredis.Redis.from_url(
            self._where.server,
            **options,
            decode_responses=True,
            socket_connect_timeout=2.0,
            # No per-call timer (asyncio.wait_for on every send costs ~20% of a submit):
            # TCP keepalive and TCP_USER_TIMEOUT notice a dead server or network instead.
            socket_timeout=None,
            socket_keepalive=True,
            socket_keepalive_options=_keepalive_options(),
            retry=Retry(NoBackoff(), 0),  # retries are ours: only where repeating is safe
            health_check_interval=15,
        )
        channel_options = ChannelOptions.from_client(client, _keepalive_options()) if options else None
        channel = None if channel_options is None else ScriptChannel(channel_options)  # plain TCP only
        try:
            await client.ping()
            if channel is not None:
                await channel.connect()
        except (RedisError, OSError) as exc:
            await client.aclose()
            raise self._down(exc) from exc
        self._client = client
        self._scripts = register_all(client)
        self._channel = channel
        self._wake = Wakeups(client, self.key("wake"))

    async def close(self) -> None:
        wake, client, channel = self._wake, self._client, self._channel
        self._wake = self._client = self._channel = None
        if channel is not None:
            channel.close()
        if wake is not None:
            await wake.close()
        if client is not None:
            await client.aclose()

    async def migrate(self) -> list[str]:
        """Redis has no schema: keys appear as they are used."""
        return []

    # --- TaskStore ---------------------------------------------------------------------

    async def task_enqueue_many(self, params: EnqueueParams) -> list[Enqueued]:
        if not params.tasks:
            return []
        # only the bounds of this batch's queues: a batch of unbounded queues sends none
        # (and a single plain task then takes enqueue.lua's short path)
        limits = params.max_length
        bounds = limits and {t.queue: limits[t.queue] for t in params.tasks if t.queue in limits}
        args: list[Any] = [repr(time.time()), len(params.tasks), dump(bounds) if bounds else ""]
        try:
            for t in params.tasks:
                args += enqueue_args(t)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"task args must be JSON-serializable: {exc}") from exc
        reply: Any = None
        lost_reply = False  # an earlier attempt may have been applied before its reply was lost
        for delay in (*RETRY_DELAYS, None):
            try:
                reply = await self.run("enqueue", args, retry=False)
                break
            except BackendUnavailable:
                if delay is None:
                    raise
                lost_reply = True
                await asyncio.sleep(delay)
        if reply[0] == "err":
            if reply[1] == "exists" and lost_reply and reply[2] in {t.id for t in params.tasks}:
                return await admin.enqueued_again(self, params)  # our own first attempt landed
            self._enqueue_error(reply)
        return [Enqueued(reply[i], _STATES[reply[i + 1]], int(reply[i + 2]) == 1) for i in range(1, len(reply), 3)]

    @staticmethod
    def _enqueue_error(reply: list[Any]) -> None:
        code = reply[1]
        if code == "full":
            queue, bound = reply[2], int(reply[3])
            raise QueueFull(
                f"queue {queue!r} is full ({bound} unfinished tasks at most)", queue=queue, max_length=bound
            )
        if code == "notfound":
            raise DependencyNotFound(f"task {reply[3]} depends on unknown task {reply[2]}", task_id=reply[2])
        raise TaskExists(f"task {reply[2]} already exists", task_id=reply[2])

    async def task_claim(self, params: ClaimParams) -> Claim:
        if self._wake is not None:
            await self._wake.ensure_started()
            self._seen = self._wake.seq
        now = time.time() if params.now is None else params.now
        args = [
            repr(now),
            params.worker_id,
            params.limit,
            repr(float(params.lease_seconds)),
            secrets.token_hex(8) + ".",
            "" if not params.aging_interval else repr(float(params.aging_interval)),
            dump(sorted(params.tags)),
            *params.queues,
        ]
        reply = await self.run("claim", args)
        expires = now + params.lease_seconds
        tasks = [claimed_from(reply, pos, expires) for pos in range(1, len(reply), CLAIM_STRIDE)]
        return Claim(tasks=tasks, next_due=float(reply[0]) if reply[0] else None)

    async def task_finish_many(self, outcomes: Sequence[Outcome]) -> list[bool]:
        if not outcomes:
            return []
        args: list[Any] = [repr(time.time()), len(outcomes)]
        for o in outcomes:
            try:
                result = dump(o.result)
            except (TypeError, ValueError) as exc:
                raise InvalidInput(f"the result of task {o.task_id} must be JSON-serializable: {exc}") from exc
            at = time.time() if o.finished_at is None else o.finished_at
            if o.kind == "retry":
                extra = repr(float(at if o.run_at is None else o.run_at))
            elif o.kind == "fail":
                extra = (o.failure_reason or FailureReason.PERMANENT_ERROR).value
            else:
                extra = ""
            error = "" if o.error is None else o.error.model_dump_json()
            args += [o.task_id, o.lease_token, o.kind, o.worker_id or "", result, error, extra, repr(float(at))]
        reply = await self.run("finish", args)
        return [bool(x) for x in reply]

    async def task_release(self, params: ReleaseParams) -> int:
        if not params.leases:
            return 0
        args: list[Any] = [repr(time.time()), params.worker_id, params.reason]
        for lease in params.leases:
            args += [lease.task_id, lease.lease_token, "1" if lease.refund else "0"]
        return int(await self.run("release", args))

    async def task_reap_expired(self, params: ReapParams) -> list[str]:
        now = time.time() if params.now is None else params.now
        return list(await self.run("reap", [repr(now), params.limit]))

    async def task_cancel(self, params: CancelParams) -> Task:
        reply = await self.run("cancel", [repr(time.time()), params.task_id, params.reason])
        if reply[0] == "err":
            if reply[1] == "notfound":
                raise TaskNotFound(f"task {params.task_id} not found", task_id=params.task_id)
            raise InvalidStateTransition(
                f"cannot cancel task {params.task_id} in state {reply[2]}",
                task_id=params.task_id,
                state=reply[2],
                transition="cancel",
            )
        return await self.task_get(params.task_id)

    async def task_get(self, task_id: str) -> Task:
        return await admin.task_get(self, task_id)

    async def task_wait(self, params: WaitParams) -> None:
        """Return when a script publishes work for ``params.queues``, the next delayed
        task there falls due, or ``params.timeout`` passes (see ``redis_wake``)."""
        wake = self._wake
        if wake is None:
            raise BackendUnavailable(f"the Redis backend for {self._where.where} is not open")
        await wake.ensure_started()
        queues = frozenset(params.queues)
        seen = self._seen
        try:
            timeout = max(0.0, params.timeout)
            if timeout > 0 and not wake.news_since(seen, queues):
                due = await admin.next_due(self, list(params.queues))
                if due is not None:
                    timeout = min(timeout, max(0.0, due - time.time()))
            await wake.wait(queues, seen, timeout)
        except BackendUnavailable:
            await asyncio.sleep(min(params.timeout, 0.5))  # the caller's next call reports the outage
        finally:
            self._seen = wake.seq

    # --- AdminStore --------------------------------------------------------------------

    async def task_list(self, params: ListParams) -> Page:
        return await admin.task_list(self, params)

    async def workflow_get(self, workflow_id: str) -> list[Task]:
        return await admin.workflow_get(self, workflow_id)

    async def task_replay(self, flt: TaskFilter) -> int:
        ids = await admin.failed_ids(self, flt)
        return int(await self.run("replay", [repr(time.time()), *ids])) if ids else 0

    async def task_purge(self, flt: TaskFilter) -> int:
        ids = await admin.failed_ids(self, flt)
        return int(await self.run("purge", [repr(time.time()), *ids])) if ids else 0

    async def task_restore(self, tasks: Sequence[Task]) -> int:
        return await admin.task_restore(self, tasks) if tasks else 0

    async def queue_list(self) -> list[QueueInfo]:
        return await admin.queue_list(self)

    async def stats(self) -> Stats:
        return await admin.stats(self)

    # --- FlowStore ---------------------------------------------------------------------

    async def queue_update(self, update: QueueUpdate) -> FlowControl:
        return await admin.queue_update(self, update)

    async def flow_list(self) -> list[FlowControl]:
        return await admin.flow_list(self)

    async def task_ahead(self, task_id: str) -> int:
        return await admin.task_ahead(self, task_id)

    # --- OutboxStore (lib.lua's record() writes the events) ----------------------------

    async def outbox_subscribe(self, events: frozenset[str]) -> None:
        check_events(events)
        await self.run("outbox", [repr(time.time()), "subscribe", *sorted(events)])

    async def outbox_claim(self, params: OutboxClaimParams) -> list[OutboxEvent]:
        now = time.time() if params.now is None else params.now
        rows = await self.run("outbox", [repr(now), "claim", params.limit, repr(now + params.lease_seconds)])
        events = [
            outbox_event([*row[:3], row[3] or None, *row[4:11], row[11] or None, row[12] or None]) for row in rows
        ]
        return sorted(events, key=lambda e: e.id)

    async def outbox_settle(self, settles: Sequence[OutboxSettle]) -> None:
        args: list[Any] = [repr(time.time()), "settle"]
        for settle in settles:
            retry_at = "" if settle.retry_at is None else repr(settle.retry_at)
            args += [settle.id, retry_at, dump(list(settle.done))]
        if settles:
            await self.run("outbox", args)

    async def outbox_size(self) -> int:
        return int(await self.guarded(lambda: self.client.zcard(self.key("obq"))))

    async def queue_bound_set(self, queue: str, max_length: int | None) -> None:
        check_bound(queue, max_length)
        await admin.queue_bound_set(self, queue, max_length)

    async def queue_bounds(self) -> dict[str, int]:
        return await admin.queue_bounds(self)

    # --- MetricStore -----------------------------------------------------------------

    async def metrics_add(self, deltas: Mapping[str, float]) -> None:
        if deltas:
            await admin.metrics_add(self, deltas)

    async def metrics_read(self) -> dict[str, float]:
        return await admin.metrics_read(self)

    # --- WorkerRegistry ----------------------------------------------------------------

    async def worker_register(self, info: WorkerInfo) -> None:
        await admin.worker_register(self, info)

    async def worker_heartbeat(self, params: HeartbeatParams) -> list[str]:
        now = time.time() if params.now is None else params.now
        args: list[Any] = [
            repr(now),
            params.worker_id,
            beat_record(params.state, params.active, params.processed, now),
            repr(float(params.lease_seconds)),
        ]
        for lease in params.leases:
            args += [lease.task_id, lease.lease_token]
        return list(await self.run("heartbeat", args))

    async def worker_deregister(self, worker_id: str) -> None:
        await admin.worker_deregister(self, worker_id)

    async def worker_list(self) -> list[WorkerInfo]:
        return await admin.worker_list(self)


__all__ = ["RedisBackend"]
