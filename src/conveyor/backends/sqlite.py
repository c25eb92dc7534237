"""The embedded engine: one SQLite file shared by every process on the machine.

``sqlite:///relative/path.db`` (relative to the working directory) or
``sqlite:////absolute/path.db``, as in SQLAlchemy; ``?busy_timeout=MS`` sets how long
a write waits for another process's lock (default 5000 ms) before the operation
fails with ``BackendUnavailable``.

Several worker processes share the file safely: WAL journal (readers never block the
writer), ``synchronous=NORMAL`` (durable at checkpoints, fast commits), and every
write in a ``BEGIN IMMEDIATE`` transaction. Each backend owns one connection, used
only from one thread; the async methods hand the synchronous operations in
``sqlite_ops`` (tasks) and ``sqlite_admin`` (listings, stats, workers) to that thread.

SQLite has no LISTEN/NOTIFY, so ``task_wait`` polls ``PRAGMA data_version`` (it
changes when another connection commits), adaptively from 1 ms to 30 ms, and backends
on the same file in one process wake each other at once through a shared notifier.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote

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
from conveyor.backends.sqlite_admin import AdminOps
from conveyor.backends.sqlite_ops import TaskOps
from conveyor.errors import BackendUnavailable, InvalidInput
from conveyor.features.flow import FlowControl, QueueUpdate
from conveyor.models import Page, QueueInfo, Stats, Task, WorkerInfo

log = logging.getLogger("conveyor.sqlite")
T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT_MS = 5000
MIN_SQLITE = (3, 35, 0)  # RETURNING
POLL_MIN, POLL_MAX, POLL_BACKOFF = 0.001, 0.03, 1.5


def parse_url(url: str) -> tuple[str, int]:
    """``(path, busy_timeout_ms)`` from a ``sqlite:///...`` URL; ``InvalidInput`` if malformed."""
    prefix = "sqlite://"
    if not url.lower().startswith(prefix):
        raise InvalidInput(f"not a SQLite URL: {url!r} (expected sqlite:///path/to/file.db)")
    rest, _, query = url[len(prefix) :].partition("?")
    if not rest.startswith("/") or rest == "/":
        raise InvalidInput(
            f"invalid SQLite URL {url!r}: expected sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    path = unquote(rest[1:])
    if path == ":memory:":
        raise InvalidInput("an in-memory SQLite database cannot be shared between workers: use memory://")
    busy = DEFAULT_BUSY_TIMEOUT_MS
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key != "busy_timeout" or not value.isdigit():
            raise InvalidInput(f"invalid SQLite URL option {key}={value!r}: only busy_timeout=<ms> is supported")
        busy = int(value)
    return path, busy


class Notifier:
    """Wakes waiters of every backend on one file in this process (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self.seq = 0  # bumped on every notify, so a waiter can tell it missed one

    def notify(self) -> None:
        with self._lock:
            self.seq += 1
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(event.set)

    def add(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        with self._lock:
            self._waiters.add((loop, event))

    def discard(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        with self._lock:
            self._waiters.discard((loop, event))


_notifiers: dict[str, Notifier] = {}
_notifiers_lock = threading.Lock()


def notifier_for(path: str) -> Notifier:
    """The process-wide notifier of one resolved database path."""
    with _notifiers_lock:
        return _notifiers.setdefault(path, Notifier())


def resolve_path(path: str) -> str:
    """The absolute path, the key that lets same-file backends find each other."""
    folder = Path(path).parent
    if not folder.is_dir():
        raise InvalidInput(f"cannot open SQLite database {path}: directory {folder} does not exist")
    return str(Path(path).resolve())


def connect(path: str, busy_timeout_ms: int, *, any_thread: bool = False) -> sqlite3.Connection:
    """Open the file with the settings concurrent processes rely on; ``any_thread`` for
    a connection used on an event loop, which sync callers drive in their own threads
    (one at a time, see ``conveyor.portal``)."""
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise BackendUnavailable(f"SQLite {sqlite3.sqlite_version} is too old: Conveyor needs 3.35 or newer")
    conn = sqlite3.connect(
        path,
        timeout=busy_timeout_ms / 1000,
        isolation_level=None,
        cached_statements=256,
        check_same_thread=not any_thread,
    )
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise BackendUnavailable(f"cannot use WAL journaling on {path} (got {mode}); is it on a network drive?")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        conn.execute("PRAGMA cache_size=-8192")  # 8 MiB: enough for the hot index pages, flat RSS
        conn.execute("PRAGMA temp_store=MEMORY")
    except BaseException:
        conn.close()
        raise
    return conn


def _log_checkpoint_error(future: Future[Any]) -> None:
    exc = future.exception()
    if exc is not None:
        log.warning("WAL checkpoint failed (the next one retries): %s", exc)


class _Busy(Exception):
    """The write lock was taken and this connection does not wait for it."""


FAST_SUBMIT_MAX = 64  # tasks; larger batches run on the connection thread
FAST_CHECKPOINT_EVERY = 500  # fast commits between two checkpoints (the WAL default is ~1000 pages)


def _unavailable(exc: sqlite3.Error, path: str, busy_timeout_ms: int) -> BackendUnavailable:
    text = str(exc)
    if "locked" in text or "busy" in text:
        message = (
            f"SQLite database {path} stayed locked for more than {busy_timeout_ms} ms "
            "(another process holds the write lock); nothing was written"
        )
    elif "no such table" in text:
        message = f"SQLite database {path} has no Conveyor schema: run `conveyor migrate` ({text})"
    else:
        message = f"SQLite database {path} is unavailable: {text}"
    return BackendUnavailable(message, path=path)


class SqliteBackend:
    """The ``sqlite://`` engine (see the module docstring)."""

    def __init__(self, url: str, *, offline_after: float = 30.0, auto_migrate: bool = True) -> None:
        self.url = url
        self.offline_after = offline_after
        self.auto_migrate = auto_migrate
        self.path, self.busy_timeout_ms = parse_url(url)
        self._executor: ThreadPoolExecutor | None = None
        self._ops: TaskOps | None = None
        self._fast_ops: TaskOps | None = None  # loop-thread connection for short submits
        self._admin: AdminOps | None = None
        self._notifier = Notifier()
        self._seen_seq = 0
        self._fast_commits = 0

    # --- plumbing ----------------------------------------------------------------------

    def _guarded(self, fn: Callable[..., T], *args: Any, busy_ok: bool = False) -> T:
        """Database errors become ``BackendUnavailable`` (``_Busy`` if ``busy_ok``)."""
        try:
            return fn(*args)
        except sqlite3.DatabaseError as exc:
            if not isinstance(exc, sqlite3.OperationalError) and type(exc) is not sqlite3.DatabaseError:
                raise  # integrity and programming errors are bugs, not an outage
            if busy_ok and ("locked" in str(exc) or "busy" in str(exc)):
                raise _Busy from exc
            raise _unavailable(exc, self.path, self.busy_timeout_ms) from exc

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise BackendUnavailable(f"the SQLite backend for {self.url} is not open: call `await backend.open()`")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._guarded, fn, *args)

    @property
    def ops(self) -> TaskOps:
        if self._ops is None:
            raise BackendUnavailable(f"the SQLite backend for {self.url} is not open: call `await backend.open()`")
        return self._ops

    @property
    def admin(self) -> AdminOps:
        if self._admin is None:
            raise BackendUnavailable(f"the SQLite backend for {self.url} is not open: call `await backend.open()`")
        return self._admin

    # --- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Connect on a dedicated thread, then migrate unless ``auto_migrate`` is off."""
        if self._ops is not None:
            return
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="conveyor-sqlite")
        try:
            self._notifier = notifier_for(await self._run(resolve_path, self.path))
            conn = await self._run(connect, self.path, self.busy_timeout_ms)
            self._ops = TaskOps(conn, self._notifier.notify)
            self._admin = AdminOps(conn, self._notifier.notify)
            if self.auto_migrate:
                await self.migrate()
            # A second connection, used on the loop thread, that never waits for the
            # write lock: a short submit skips the hop to the connection thread (the
            # largest cost of a one-by-one submit) and falls back to it when busy.
            fast = connect(self.path, 0, any_thread=True)
            # Checkpoints copy the WAL into the file and fsync: never on the loop thread.
            # The connection thread runs one every FAST_CHECKPOINT_EVERY fast commits.
            fast.execute("PRAGMA wal_autocheckpoint=0")
            self._fast_ops = TaskOps(fast, self._notifier.notify)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        executor, ops, fast = self._executor, self._ops, self._fast_ops
        self._ops = self._admin = self._fast_ops = None
        if fast is not None:
            fast.close()
        if executor is None:
            return
        try:
            if ops is not None:
                await asyncio.get_running_loop().run_in_executor(executor, ops.close)
        finally:
            self._executor = None
            executor.shutdown(wait=False)

    async def migrate(self) -> list[str]:
        return await self._run(self.ops.migrate)

    # --- TaskStore ---------------------------------------------------------------------

    async def task_enqueue_many(self, params: EnqueueParams) -> list[Enqueued]:
        fast = self._fast_ops
        if fast is not None and len(params.tasks) <= FAST_SUBMIT_MAX:
            try:
                done = self._guarded(fast.task_enqueue_many, params, busy_ok=True)
            except _Busy:
                pass  # another connection holds the write lock: wait for it off the loop
            else:
                self._fast_commits += 1
                if self._fast_commits >= FAST_CHECKPOINT_EVERY:
                    self._fast_commits = 0
                    self._checkpoint_soon()
                return done
        return await self._run(self.ops.task_enqueue_many, params)

    def _checkpoint_soon(self) -> None:
        """A passive WAL checkpoint on the connection thread, not awaited (the fast
        connection's commits skip the automatic one, see ``open``)."""
        if self._executor is not None and self._ops is not None:
            future = self._executor.submit(self._guarded, self._ops.checkpoint)
            future.add_done_callback(_log_checkpoint_error)

    async def task_claim(self, params: ClaimParams) -> Claim:
        self._seen_seq = self._notifier.seq  # a later same-process wake-up is not missed
        return await self._run(self.ops.task_claim, params)

    async def task_finish_many(self, outcomes: Sequence[Outcome]) -> list[bool]:
        return await self._run(self.ops.task_finish_many, outcomes)

    async def task_release(self, params: ReleaseParams) -> int:
        return await self._run(self.ops.task_release, params)

    async def task_reap_expired(self, params: ReapParams) -> list[str]:
        return await self._run(self.ops.task_reap_expired, params)

    async def task_cancel(self, params: CancelParams) -> Task:
        return await self._run(self.ops.task_cancel, params)

    async def task_get(self, task_id: str) -> Task:
        return await self._run(self.ops.task_get, task_id)

    async def task_wait(self, params: WaitParams) -> None:
        """Return when another connection commits, a same-process backend makes work
        ready, the next delayed task in ``params.queues`` falls due, or on timeout.

        Baselines come from the last claim, so work that arrived between that claim
        and this call returns at once instead of being slept through.
        """
        ops, notifier = self.ops, self._notifier
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        notifier.add(loop, event)  # before reading seq: a notify in between is not lost
        version: int | None = None
        try:
            version, due = await self._run(ops.wait_start, params.queues)
            baseline = version if ops.seen_version is None else ops.seen_version
            timeout = max(0.0, params.timeout)
            if due is not None:
                timeout = min(timeout, max(0.0, due - time.time()))
            deadline = loop.time() + timeout
            delay = POLL_MIN
            while notifier.seq == self._seen_seq and version == baseline:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(delay, remaining))
                    return
                delay = min(delay * POLL_BACKOFF, POLL_MAX)
                version = await self._run(ops.data_version)
        finally:
            notifier.discard(loop, event)
            self._seen_seq = notifier.seq
            if version is not None:
                ops.seen_version = version  # what this call saw is no news to the next

    # --- AdminStore --------------------------------------------------------------------

    async def task_list(self, params: ListParams) -> Page:
        return await self._run(self.admin.task_list, params)

    async def workflow_get(self, workflow_id: str) -> list[Task]:
        return await self._run(self.admin.workflow_get, workflow_id)

    async def task_replay(self, flt: TaskFilter) -> int:
        return await self._run(self.admin.task_replay, flt)

    async def task_purge(self, flt: TaskFilter) -> int:
        return await self._run(self.admin.task_purge, flt)

    async def task_restore(self, tasks: Sequence[Task]) -> int:
        return await self._run(self.admin.task_restore, list(tasks)) if tasks else 0

    async def queue_list(self) -> list[QueueInfo]:
        return await self._run(self.admin.queue_list)

    async def stats(self) -> Stats:
        return await self._run(self.admin.stats, self.offline_after)

    # --- FlowStore ----------------------------------------------------------------------

    async def queue_update(self, update: QueueUpdate) -> FlowControl:
        return await self._run(self.admin.queue_update, update)

    async def flow_list(self) -> list[FlowControl]:
        return await self._run(self.admin.flow_list)

    async def task_ahead(self, task_id: str) -> int:
        return await self._run(self.admin.task_ahead, task_id)

    # --- OutboxStore -------------------------------------------------------------------

    async def outbox_subscribe(self, events: frozenset[str]) -> None:
        check_events(events)
        await self._run(self.admin.outbox_subscribe, events)

    async def outbox_claim(self, params: OutboxClaimParams) -> list[OutboxEvent]:
        return await self._run(self.admin.outbox_claim, params)

    async def outbox_settle(self, settles: Sequence[OutboxSettle]) -> None:
        if settles:
            await self._run(self.admin.outbox_settle, list(settles))

    async def outbox_size(self) -> int:
        return await self._run(self.admin.outbox_size)

    async def queue_bound_set(self, queue: str, max_length: int | None) -> None:
        check_bound(queue, max_length)
        await self._run(self.admin.queue_bound_set, queue, max_length)

    async def queue_bounds(self) -> dict[str, int]:
        return await self._run(self.admin.queue_bounds)

    # --- MetricStore -----------------------------------------------------------------

    async def metrics_add(self, deltas: Mapping[str, float]) -> None:
        if deltas:
            await self._run(self.admin.metrics_add, sorted(deltas.items()))

    async def metrics_read(self) -> dict[str, float]:
        return await self._run(self.admin.metrics_read)

    # --- WorkerRegistry ----------------------------------------------------------------

    async def worker_register(self, info: WorkerInfo) -> None:
        await self._run(self.admin.worker_register, info)

    async def worker_heartbeat(self, params: HeartbeatParams) -> list[str]:
        return await self._run(self.ops.worker_heartbeat, params)

    async def worker_deregister(self, worker_id: str) -> None:
        await self._run(self.admin.worker_deregister, worker_id)

    async def worker_list(self) -> list[WorkerInfo]:
        return await self._run(self.admin.worker_list, self.offline_after)
