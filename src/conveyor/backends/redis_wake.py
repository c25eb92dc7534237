"""Wake-ups for the Redis engine: one pub/sub subscription per backend.

Scripts that make work ready or delayed ``PUBLISH`` the queue's name on ``{prefix}:wake``
in the same atomic step. One listener task per backend keeps a subscription on a
dedicated connection and wakes the ``task_wait`` calls that care about that queue,
so a worker idles on a socket, not on a poll.

A message that arrives between a worker's empty claim and its next ``task_wait``
must not be slept through: every message bumps ``seq``, a claim remembers the value
it started at, and ``task_wait`` returns at once if a message for its queues came
since. When the subscription drops (Redis restarted), the listener reconnects with
backoff and, once subscribed again, wakes everyone: messages in the gap are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

log = logging.getLogger("conveyor.redis")

ALL = "*"  # a message that concerns every queue (a flow-control change, a reconnect)


@dataclass(eq=False, slots=True)
class _Waiter:
    queues: frozenset[str]
    event: asyncio.Event = field(default_factory=asyncio.Event)


class Wakeups:
    """The listener of one backend (start it with ``ensure_started``; it lives until ``close``)."""

    def __init__(self, client: Any, channel: str) -> None:
        self._client = client
        self._channel = channel
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._waiters: set[_Waiter] = set()
        self._last: dict[str, int] = {}  # queue -> seq of its latest message
        self.seq = 0
        self._lost = False  # the subscription dropped at least once

    async def ensure_started(self, wait: float = 1.0) -> None:
        """Start listening (once) and give the subscription up to ``wait`` seconds to land."""
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name="conveyor-redis-wake")
        if not self._subscribed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._subscribed.wait(), wait)

    def news_since(self, seq: int, queues: frozenset[str]) -> bool:
        """Whether a message concerning ``queues`` (empty: any) arrived after ``seq``."""
        if self.seq == seq:
            return False
        if not queues or self._last.get(ALL, 0) > seq:
            return True
        return any(self._last.get(q, 0) > seq for q in queues)

    async def wait(self, queues: frozenset[str], seen: int, timeout: float) -> None:
        """Sleep until a message for ``queues`` arrives (or arrived since ``seen``), or ``timeout``."""
        waiter = _Waiter(queues)
        self._waiters.add(waiter)
        try:
            if self.news_since(seen, queues) or timeout <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.event.wait(), timeout)
        finally:
            self._waiters.discard(waiter)

    def _deliver(self, queue: str) -> None:
        self.seq += 1
        self._last[queue] = self.seq
        for waiter in self._waiters:
            if queue == ALL or not waiter.queues or queue in waiter.queues:
                waiter.event.set()

    async def _listen(self) -> None:
        delay = 0.05
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=False)
            try:
                await pubsub.subscribe(self._channel)
                while True:
                    message = await pubsub.get_message(timeout=30.0)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        delay = 0.05
                        if self._lost:
                            self._deliver(ALL)  # whatever was published while we were away
                        self._subscribed.set()
                    elif message["type"] == "message":
                        self._deliver(message["data"])
            except (RedisError, OSError) as exc:
                level = logging.WARNING if self._subscribed.is_set() else logging.DEBUG  # once per outage
                self._subscribed.clear()
                self._lost = True
                log.log(level, "Redis wake-up subscription lost (%s); reconnecting with backoff", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await task
