"""Concurrent small submits share statements: group commit on the client side.

A web app's request handlers each submit one task at a time, many at once. Sent one
statement each, they cost the database a statement, a commit and a WAL flush apiece,
and the pool a connection apiece. ``Gather`` sends them together instead: while
``lanes`` submits are in flight, the next ones wait and then go as one multi-task
statement (one commit, one flush). A submit that finds a lane free goes at once, in
its caller's own coroutine, so one-at-a-time submits pay nothing for this.

Each caller still gets exactly its own outcome. A shared statement is atomic, so a
task that the engine refuses (an id that exists, args it cannot store) would sink the
others: when it fails that way, each caller's tasks are sent again alone and each
caller gets its own answer. An outage fails every caller of the statement, as it
would have failed each of them alone (``BackendUnavailable``: nothing half-written).

A caller cancelled while it waits takes its tasks out; one cancelled while its
statement runs may find its tasks stored, as with any cancelled network call.

The HTTP API gathers its single submits a step earlier, per event-loop iteration and
for every engine (``conveyor.api.submit``); its batches then come here like any
other submit. This one lives in the engine because only there does an in-flight
statement say when waiting pays: it adds no step to a submit that finds a lane free.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from conveyor.backends.base import Enqueued, EnqueueParams
from conveyor.errors import BackendUnavailable

Store = Callable[[EnqueueParams], Awaitable[list[Enqueued]]]
_Waiter = tuple[EnqueueParams, "asyncio.Future[list[Enqueued]]"]

# Statements in flight at once. Two keep the database busy while the client builds
# the next statement; more split the waiting callers into smaller statements (16
# callers on PostgreSQL, 2-core machine: 3,800 submits/s unshared, 11,000-12,000 with
# two lanes, 10,000 with three, 11,000 with one).
LANES = 2
# Tasks per shared statement at most; later waiters go in the next one.
MOST = 1000


class Gather:
    """Send concurrent ``EnqueueParams`` through ``store``, merged while lanes are busy.

    Only params that may share a statement belong here: no idempotency keys, bounded
    queues or dependencies (those lock and check per submit), and small (a batch is
    already one statement)."""

    def __init__(self, store: Store, lanes: int = LANES, most: int = MOST) -> None:
        self._store = store
        self._lanes = lanes
        self._most = most
        self._busy = 0
        self._waiting: deque[_Waiter] = deque()
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, params: EnqueueParams) -> list[Enqueued]:
        if self._busy < self._lanes and not self._waiting:
            self._busy += 1
            try:
                return await self._store(params)
            finally:
                self._busy -= 1
                self._next()
        future: asyncio.Future[list[Enqueued]] = asyncio.get_running_loop().create_future()
        self._waiting.append((params, future))
        return await future  # cancelled here: the future is too, and its tasks are skipped

    async def drain(self) -> None:
        """Wait until every shared statement started has ended (before the pool closes)."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    def _next(self) -> None:
        """Start a shared statement with the waiters, if a lane is free."""
        while self._waiting and self._busy < self._lanes:
            group: list[_Waiter] = []
            size = 0
            while self._waiting and (not group or size + len(self._waiting[0][0].tasks) <= self._most):
                params, future = self._waiting.popleft()
                if not future.done():
                    group.append((params, future))
                    size += len(params.tasks)
            if not group:
                continue
            self._busy += 1
            task = asyncio.get_running_loop().create_task(self._shared(group))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _shared(self, group: list[_Waiter]) -> None:
        try:
            if len(group) == 1:
                await self._alone(*group[0])
                return
            merged = EnqueueParams([t for params, _ in group for t in params.tasks])
            try:
                results = await self._store(merged)
            except BackendUnavailable as exc:  # its commit may or may not have happened
                for _, future in group:
                    _fail(future, exc)
            except Exception:  # refused whole, nothing stored: each caller's tasks go alone
                for params, future in group:
                    await self._alone(params, future)
            else:
                start = 0
                for params, future in group:
                    end = start + len(params.tasks)
                    if not future.done():
                        future.set_result(results[start:end])
                    start = end
        except BaseException:  # cancelled (the loop is shutting down): so are its callers
            for _, future in group:
                future.cancel()
            raise
        finally:
            self._busy -= 1
            self._next()

    async def _alone(self, params: EnqueueParams, future: asyncio.Future[list[Enqueued]]) -> None:
        if future.done():  # its caller gave up before these tasks were sent
            return
        try:
            result = await self._store(params)
        except Exception as exc:
            _fail(future, exc)
        else:
            if not future.done():
                future.set_result(result)


def _fail(future: asyncio.Future[list[Enqueued]], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
