"""Batches attempt outcomes into few writes: the main throughput lever after claims.

Outcomes wait at most ``delay`` seconds (or until ``batch`` of them gather) and are
written with one ``task_finish_many``. Writes are shielded from cancellation and
retried while the engine is unreachable, so a shutdown or a blip never loses a result
(the lease fences any write that arrives too late).
"""

from __future__ import annotations

import asyncio
import logging

from conveyor.backends.base import Outcome, TaskStore
from conveyor.errors import ConveyorError

log = logging.getLogger("conveyor.worker")


class Completer:
    def __init__(self, backend: TaskStore, batch: int = 256, delay: float = 0.002) -> None:
        self._backend = backend
        self._batch = batch
        self._delay = delay
        self._buffer: list[Outcome] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._writes: set[asyncio.Task[None]] = set()  # under way, even if their flush was cancelled
        self.written = 0
        self.stale = 0

    def add(self, outcome: Outcome) -> None:
        self._buffer.append(outcome)
        self._wake.set()

    async def run(self) -> None:
        """Flush forever; cancel it and call ``flush()`` once more to drain."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._delay and len(self._buffer) < self._batch:
                await asyncio.sleep(self._delay)
            await self.flush()

    async def flush(self) -> None:
        """Write everything buffered now and wait for writes already under way.

        Each write is shielded, so cancelling a flush cannot drop it; the next flush
        (the worker's last, at shutdown) waits for it to land.
        """
        async with self._lock:
            while self._buffer:
                chunk = self._buffer[: self._batch]
                del self._buffer[: self._batch]
                write = asyncio.ensure_future(self._write(chunk))
                self._writes.add(write)
                write.add_done_callback(self._writes.discard)
                await asyncio.shield(write)
        if self._writes:
            await asyncio.gather(*self._writes)

    async def _write(self, chunk: list[Outcome]) -> None:
        delay = 0.05
        while True:
            try:
                applied = await self._backend.task_finish_many(chunk)
            except Exception as exc:  # outcomes are never dropped: keep them until written
                if isinstance(exc, ConveyorError):
                    log.warning("writing %d outcomes failed (%s); retrying in %.2f s", len(chunk), exc, delay)
                else:
                    log.exception("writing %d outcomes crashed; retrying in %.2f s", len(chunk), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            stale = applied.count(False)
            self.written += len(chunk) - stale
            self.stale += stale
            if stale:
                log.info("%d outcomes were stale (lease lost) and were not recorded", stale)
            return
