"""Wake-ups for the PostgreSQL engine: one LISTEN connection per backend instance,
opened by its first claim or wait (a process that only submits never listens).

Every operation that makes work ready (a submit, a release, a retry, dependents
released, a replay, a resumed queue) sends ``pg_notify(channel, queue)`` in its own
transaction, so the notification arrives exactly when the work is visible. The
listener keeps one dedicated connection (never one from the pool) and wakes the
``task_wait`` calls whose queues match; an empty payload wakes everyone.

``seq`` counts notifications (and reconnects, after which one may have been missed),
so a caller that remembers ``seq`` at its last claim can tell that work arrived
before it started waiting and skip the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger("conveyor.backends.postgres")

BACKOFF_MIN, BACKOFF_MAX = 0.05, 5.0


@dataclass(eq=False, slots=True)
class _Waiter:
    event: asyncio.Event
    queues: frozenset[str]


@dataclass(eq=False)
class Listener:
    """LISTEN on ``channel`` over a connection made by ``connect``, reconnecting with backoff."""

    connect: Callable[[], Any]  # -> Awaitable[psycopg.AsyncConnection]
    channel: str
    seq: int = 0
    _waiters: set[_Waiter] = field(default_factory=set)
    _task: asyncio.Task[None] | None = None
    _ready: asyncio.Event | None = None

    @property
    def listening(self) -> bool:
        """Whether LISTEN was in place once and the listener still runs (reconnecting
        after a lost connection counts: it wakes everyone when it is back)."""
        return self._task is not None and not self._task.done() and self._ready is not None and self._ready.is_set()

    def start(self) -> None:
        """Start listening on the running loop (idempotent)."""
        if self._task is None or self._task.done():
            self._ready = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="conveyor-pg-listen")

    async def ready(self, timeout: float) -> None:
        """Wait (at most ``timeout``) until LISTEN is in place, so nothing sent after is missed."""
        if self._ready is not None and not self._ready.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    @contextlib.asynccontextmanager
    async def waiting(self, queues: Sequence[str]) -> AsyncIterator[asyncio.Event]:
        """An event set by the next notification for ``queues`` (or for everyone);
        registered before the caller looks at the database, so none is missed."""
        waiter = _Waiter(asyncio.Event(), frozenset(queues))
        self._waiters.add(waiter)
        try:
            yield waiter.event
        finally:
            self._waiters.discard(waiter)

    def _wake(self, payload: str) -> None:
        self.seq += 1
        for waiter in self._waiters:
            if not payload or not waiter.queues or payload in waiter.queues:
                waiter.event.set()

    async def _run(self) -> None:
        delay = BACKOFF_MIN
        while True:
            try:
                conn: psycopg.AsyncConnection[Any] = await self.connect()
                async with conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    delay = BACKOFF_MIN
                    self._wake("")  # anything sent while not listening may have been missed
                    if self._ready is not None:
                        self._ready.set()
                    async for note in conn.notifies():
                        self._wake(note.payload)
            except (psycopg.Error, OSError) as exc:
                log.warning("PostgreSQL listener lost its connection (%s); reconnecting in %.2f s", exc, delay)
            self._wake("")
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
