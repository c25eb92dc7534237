"""The PostgreSQL engine: many workers on many machines against one database.

``postgresql://user:password@host:port/dbname?schema=conveyor`` (``postgres://`` too).
Every object lives in ``schema`` (default ``conveyor``; lowercase letters, digits and
``_``), created by ``migrate()``. Options in the query string, besides ``schema``:

* ``pool_min`` / ``pool_max``: connections kept / allowed per backend (default 1 / 8);
* ``connect_timeout``: seconds an operation waits for a connection before it fails
  with ``BackendUnavailable`` (default 5);
* ``auto_migrate=false``: do not migrate on ``open()`` (``conveyor migrate`` does);
* ``prepare=false``: no server-side prepared statements (PgBouncer in transaction mode);
* ``commit``: which commits wait for their WAL to reach disk. ``submits`` (default):
  submits, cancels, replays, purges and flow settings wait, so an acknowledged submit
  survives a database crash; worker-side writes (claims, outcomes, heartbeats, lease
  releases, reaps) do not: a crash may forget their last moments, which the lease
  rules repair (the task runs again: at-least-once). ``durable``: every commit waits.
  ``fast``: none waits, submits included (a crash may lose acknowledged submits);
* anything else (``sslmode``, ``application_name``, ...) goes to libpq unchanged.

Operations run on a ``psycopg_pool.AsyncConnectionPool`` in autocommit mode; SQL is in
``sql/postgres/queries.sql``; the hot path is ``postgres_ops``, flow control
``postgres_flow``, admin ``postgres_admin``, wake-ups ``postgres_listen`` (one LISTEN
connection per backend, from its first claim or wait) and transactional enqueue
``postgres_tx``. A lost server makes each operation fail with ``BackendUnavailable``
(nothing half-written: every operation is one transaction, though one whose commit
answer was lost may have happened whole) while the pool reconnects in the background
with backoff; the worker retries claims and outcome writes until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import select
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from conveyor.backends import postgres_admin as admin
from conveyor.backends import postgres_ops as ops
from conveyor.backends import postgres_outbox as outbox
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
    split_url,
)
from conveyor.backends.gather import Gather
from conveyor.backends.postgres_listen import Listener
from conveyor.backends.sqlfiles import load_migrations
from conveyor.errors import BackendUnavailable, ConveyorError, InvalidInput
from conveyor.features.flow import FlowControl, QueueUpdate
from conveyor.models import Page, QueueInfo, Stats, Task, WorkerInfo

T = TypeVar("T")
Conn = AsyncConnection[Any]

DEFAULT_SCHEMA = "conveyor"
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,49}$")
RECONNECT_CHAIN = 5.0  # seconds the pool keeps retrying one failed connection attempt
_OURS = {"schema", "pool_min", "pool_max", "connect_timeout", "auto_migrate", "prepare", "commit"}


class PgUrl:
    """A parsed ``postgresql://`` URL: libpq's connection string plus Conveyor's options."""

    def __init__(self, url: str) -> None:
        parts = split_url(url)
        if parts.scheme.lower() not in ("postgresql", "postgres"):
            raise InvalidInput(f"not a PostgreSQL URL: {url!r} (expected postgresql://user@host:port/dbname)")
        if not (parts.netloc or parts.path.strip("/") or parts.query):  # often an unset $HOST and $DB
            raise InvalidInput(
                f"invalid URL {url!r}: no host or database (expected postgresql://user@host:port/dbname)"
            )
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        self.schema = options.get("schema") or DEFAULT_SCHEMA
        if not _SCHEMA.match(self.schema):
            raise InvalidInput(
                f"invalid schema {self.schema!r} in {url!r}: use 1-50 lowercase letters, digits and '_', "
                "starting with a letter"
            )
        self.pool_min = _int_option(options, "pool_min", 1, url)
        self.pool_max = max(self.pool_min, _int_option(options, "pool_max", 8, url), 2)
        self.connect_timeout = float(_int_option(options, "connect_timeout", 5, url))
        self.auto_migrate = _bool_option(options, "auto_migrate", True, url)
        self.prepare = _bool_option(options, "prepare", True, url)
        self.commit = options.get("commit", "submits")
        if self.commit not in ("submits", "durable", "fast"):
            raise InvalidInput(
                f"invalid PostgreSQL URL option commit={self.commit!r}: expected submits, durable or fast"
            )
        rest = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in _OURS]
        query = urlencode(rest)
        self.conninfo = f"postgresql://{parts.netloc}{parts.path}" + (f"?{query}" if query else "")
        try:
            conninfo_to_dict(self.conninfo)  # libpq's own parser, offline: unknown options, bad quoting
        except psycopg.ProgrammingError as exc:
            raise InvalidInput(f"invalid URL {url!r}: {str(exc).strip()}") from None
        host = parts.hostname or "localhost"
        self.where = f"{host}:{parts.port or 5432}{parts.path or '/'}?schema={self.schema}"
        self.channel = f"conveyor_{self.schema}"

    @property
    def session_commit(self) -> str:
        """``synchronous_commit`` of every connection (worker-side writes)."""
        return "on" if self.commit == "durable" else "off"

    @property
    def durable_submits(self) -> bool:
        return self.commit != "fast"

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of every connection: autocommit, the schema on the search path."""
        kwargs: dict[str, Any] = {
            "autocommit": True,
            # No bitmap scans: a claim must walk tasks_ready in claim order and stop after
            # `limit` rows. With stale statistics (a backlog that grew faster than
            # autovacuum analyzes) the planner would otherwise bitmap-scan and sort the
            # whole backlog of a queue: seconds per claim instead of a millisecond.
            "options": (
                f"-c search_path={self.schema} -c synchronous_commit={self.session_commit} -c enable_bitmapscan=off"
            ),
            "connect_timeout": max(1, int(self.connect_timeout)),
        }
        if not self.prepare:
            kwargs["prepare_threshold"] = None
        return kwargs


def _int_option(options: dict[str, str], name: str, default: int, url: str) -> int:
    value = options.get(name)
    if value is None:
        return default
    if not value.isdigit() or int(value) < 1:
        raise InvalidInput(f"invalid PostgreSQL URL option {name}={value!r} in {url!r}: expected a positive integer")
    return int(value)


def _bool_option(options: dict[str, str], name: str, default: bool, url: str) -> bool:
    value = options.get(name)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise InvalidInput(f"invalid PostgreSQL URL option {name}={value!r} in {url!r}: expected true or false")


async def _ended(conn: Conn) -> bool:
    """Whether the server ended this pooled connection while it sat idle (a restart, a
    failover, an idle timeout), so that a call on it would fail although the server
    is back.

    An idle connection has nothing to read unless the server wrote to it meanwhile:
    only then is it tried with a round trip. The usual case costs one poll, not a
    round trip (psycopg_pool's ``check`` costs one per call, and waits a second before
    the next connection when a check fails)."""
    try:
        if not _readable(conn.pgconn.socket):
            return False
    except (psycopg.OperationalError, OSError, ValueError):
        return True  # no socket left: closed
    try:
        await AsyncConnectionPool.check_connection(conn)
    except psycopg.Error:
        return True
    return False


def _readable(fd: int) -> bool:
    """Whether ``fd`` has something to read (or hung up), without waiting. ``poll``
    where there is one: ``select`` refuses descriptors past 1023, which a process with
    many sockets open (a web server) hands out."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable)


class PostgresBackend:
    """The ``postgresql://`` engine (see the module docstring)."""

    def __init__(self, url: str, *, offline_after: float = 30.0, auto_migrate: bool = True) -> None:
        self.url = url
        self.offline_after = offline_after
        self.pg = PgUrl(url)
        self.auto_migrate = auto_migrate and self.pg.auto_migrate
        self.channel = self.pg.channel
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._listener = Listener(self._connect, self.channel)
        self._seen_seq = 0  # the listener's seq when the last claim began
        self._gather = Gather(self._store)

    # --- plumbing ----------------------------------------------------------------------

    async def _connect(self) -> Conn:
        return await AsyncConnection.connect(self.pg.conninfo, **self.pg.connect_kwargs())

    def _unavailable(self, exc: BaseException) -> BackendUnavailable:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedFunction):
            message = f"PostgreSQL {self.pg.where} has no Conveyor schema: run `conveyor migrate` ({text})"
        elif isinstance(exc, PoolTimeout):
            message = (
                f"PostgreSQL {self.pg.where} is unavailable: no connection within "
                f"{self.pg.connect_timeout:g} s; nothing was half-written"
            )
        else:
            message = f"PostgreSQL {self.pg.where} is unavailable: {text}; nothing was half-written"
        return BackendUnavailable(message, url=self.pg.where)

    async def _run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on a pooled connection; outages become ``BackendUnavailable``."""
        pool = self._pool
        if pool is None:
            raise BackendUnavailable(
                f"the PostgreSQL backend for {self.pg.where} is not open: call `await backend.open()`"
            )
        try:
            # each dead connection is dropped, until one that lives or a new one
            for checks_left in range(self.pg.pool_max, -1, -1):
                async with pool.connection(timeout=self.pg.connect_timeout) as conn:
                    if checks_left and await _ended(conn):
                        continue  # the pool discards it on the way back
                    return await fn(conn, *args)
            raise AssertionError("unreachable: the last connection is used unchecked")
        except ConveyorError:
            raise
        except (psycopg.OperationalError, psycopg.InterfaceError, psycopg.errors.UndefinedTable) as exc:
            raise self._unavailable(exc) from exc
        except psycopg.errors.UndefinedFunction as exc:
            raise self._unavailable(exc) from exc
        except psycopg.DataError as exc:  # e.g. a NUL character, which PostgreSQL text cannot hold
            raise InvalidInput(f"PostgreSQL refused the data: {exc}") from exc

    # --- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Open the pool (waiting for a first connection), then migrate unless disabled."""
        if self._pool is not None:
            return
        try:  # one attempt first: an unreachable server fails at once, in one line
            probe = await self._connect()
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc) from exc
        await probe.close()
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self.pg.conninfo,
            kwargs=self.pg.connect_kwargs(),
            min_size=self.pg.pool_min,
            max_size=self.pg.pool_max,
            open=False,
            name=f"conveyor-{self.pg.schema}",
            timeout=self.pg.connect_timeout,
            # A failed connection attempt is retried after 1 s, 2 s, 4 s...; past this the
            # pool stops, and the next call that needs a connection starts again at
            # once. So after an outage the engine is back within seconds of the
            # server, however long the outage was (not after the doubled delay).
            reconnect_timeout=RECONNECT_CHAIN,
        )
        try:
            await pool.open(wait=True, timeout=self.pg.connect_timeout)
        except (PoolTimeout, psycopg.OperationalError) as exc:
            await pool.close()
            raise self._unavailable(exc) from exc
        self._pool = pool
        if self.auto_migrate:
            try:
                await self.migrate()
            except BaseException:
                await self.close()
                raise

    async def close(self) -> None:
        await self._gather.drain()
        await self._listener.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def migrate(self) -> list[str]:
        """Create the schema and apply the numbered migrations not yet recorded, each in
        its own transaction, under an advisory lock (many processes may start at once)."""
        try:
            async with await self._connect() as conn:
                return await _migrate(conn, self.pg.schema)
        except ConveyorError:
            raise
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc) from exc

    # --- TaskStore ---------------------------------------------------------------------

    async def task_enqueue_many(self, params: EnqueueParams) -> list[Enqueued]:
        if len(params.tasks) < ops.COPY_FROM and params.plain():
            return await self._gather.submit(params)  # concurrent small submits share statements
        return await self._store(params)

    async def _store(self, params: EnqueueParams) -> list[Enqueued]:
        return await self._run(ops.enqueue, params, self.channel, self.pg.durable_submits)

    async def task_claim(self, params: ClaimParams) -> Claim:
        await self._listen()
        self._seen_seq = self._listener.seq  # work announced after this is not slept through
        return await self._run(ops.claim, params)

    async def task_finish_many(self, outcomes: Sequence[Outcome]) -> list[bool]:
        return await self._run(ops.finish_many, outcomes, self.channel)

    async def task_release(self, params: ReleaseParams) -> int:
        return await self._run(ops.release, params, self.channel)

    async def task_reap_expired(self, params: ReapParams) -> list[str]:
        return await self._run(ops.reap, params, self.channel)

    async def task_cancel(self, params: CancelParams) -> Task:
        return await self._run(ops.cancel, params)

    async def task_get(self, task_id: str) -> Task:
        return await self._run(ops.get, task_id)

    async def task_wait(self, params: WaitParams) -> None:
        """Return when a notification for ``params.queues`` arrives, the next delayed
        task there falls due, or on timeout.

        A notification may be read only after the last claim began although its work
        committed before that claim (the listener is another connection), so news
        since then does not end the wait by itself: the wait returns at once only if
        ready work is actually there.
        """
        deadline = time.monotonic() + params.timeout
        listener = self._listener
        await self._listen(params.timeout)
        seen = self._seen_seq
        async with listener.waiting(params.queues) as woken:
            try:
                due, ready = await self._run(_wait_state, list(params.queues))
            except BackendUnavailable:  # an outage: nothing to claim either, so just wait
                due, ready = None, False
            if ready and listener.seq != seen:
                return
            timeout = deadline - time.monotonic()
            if due is not None:
                timeout = min(timeout, due - time.time())
            if timeout > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), timeout)

    async def _listen(self, timeout: float | None = None) -> None:
        """Start the listener on the first claim or wait (a process that only submits
        never listens): LISTEN is in place before that claim reads, so nothing is missed."""
        listener = self._listener
        if listener.listening:
            return
        listener.start()
        await listener.ready(self.pg.connect_timeout if timeout is None else timeout)

    # --- AdminStore --------------------------------------------------------------------

    async def task_list(self, params: ListParams) -> Page:
        return await self._run(admin.task_list, params)

    async def workflow_get(self, workflow_id: str) -> list[Task]:
        return await self._run(admin.workflow_get, workflow_id)

    async def task_replay(self, flt: TaskFilter) -> int:
        return await self._run(admin.task_replay, flt, self.channel)

    async def task_purge(self, flt: TaskFilter) -> int:
        return await self._run(admin.task_purge, flt)

    async def task_restore(self, tasks: Sequence[Task]) -> int:
        return await self._run(admin.task_restore, tasks, self.channel) if tasks else 0

    async def queue_list(self) -> list[QueueInfo]:
        return await self._run(admin.queue_list)

    async def stats(self) -> Stats:
        return await self._run(admin.stats, self.offline_after)

    # --- FlowStore ---------------------------------------------------------------------

    async def queue_update(self, update: QueueUpdate) -> FlowControl:
        return await self._run(admin.queue_update, update, self.channel)

    async def flow_list(self) -> list[FlowControl]:
        return await self._run(admin.flow_list)

    async def task_ahead(self, task_id: str) -> int:
        return await self._run(admin.task_ahead, task_id)

    # --- OutboxStore -------------------------------------------------------------------

    async def outbox_subscribe(self, events: frozenset[str]) -> None:
        check_events(events)
        await self._run(outbox.subscribe, events)

    async def outbox_claim(self, params: OutboxClaimParams) -> list[OutboxEvent]:
        return await self._run(outbox.claim, params)

    async def outbox_settle(self, settles: Sequence[OutboxSettle]) -> None:
        if settles:
            await self._run(outbox.settle, settles)

    async def outbox_size(self) -> int:
        return await self._run(outbox.size)

    async def queue_bound_set(self, queue: str, max_length: int | None) -> None:
        check_bound(queue, max_length)
        await self._run(admin.queue_bound_set, queue, max_length)

    async def queue_bounds(self) -> dict[str, int]:
        return await self._run(admin.queue_bounds)

    # --- MetricStore -----------------------------------------------------------------

    async def metrics_add(self, deltas: Mapping[str, float]) -> None:
        if deltas:
            await self._run(admin.metrics_add, sorted(deltas.items()))

    async def metrics_read(self) -> dict[str, float]:
        return await self._run(admin.metrics_read)

    # --- WorkerRegistry ----------------------------------------------------------------

    async def worker_register(self, info: WorkerInfo) -> None:
        await self._run(admin.worker_register, info)

    async def worker_heartbeat(self, params: HeartbeatParams) -> list[str]:
        return await self._run(ops.heartbeat, params)

    async def worker_deregister(self, worker_id: str) -> None:
        await self._run(admin.worker_deregister, worker_id)

    async def worker_list(self) -> list[WorkerInfo]:
        return await self._run(admin.worker_list, self.offline_after)


async def _wait_state(conn: Conn, queues: list[str]) -> tuple[float | None, bool]:
    """When the next delayed task falls due, and whether ready work is waiting."""
    if queues:
        cur = await conn.execute(ops.shaped_sql("wait_queues", queues=len(queues)), ops.queue_params(queues))
    else:
        cur = await conn.execute(ops.Q["wait_all"])
    row = await cur.fetchone()
    if row is None:
        return None, False
    return (None if row[0] is None else float(row[0])), bool(row[1])


async def _migrate(conn: Conn, schema: str) -> list[str]:
    lock = f"conveyor-migrate:{schema}"
    await conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", [lock])
    try:
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS conveyor_migrations "
            "(name text PRIMARY KEY, applied_at double precision NOT NULL)"
        )
        cur = await conn.execute("SELECT name FROM conveyor_migrations")
        done = {row[0] for row in await cur.fetchall()}
        applied: list[str] = []
        for name, text in load_migrations("postgres"):
            if name in done:
                continue
            async with conn.transaction():
                await conn.execute(text)
                await conn.execute("INSERT INTO conveyor_migrations VALUES (%s, %s)", [name, time.time()])
            applied.append(name)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [lock])


__all__ = ["PgUrl", "PostgresBackend"]
