"""Event loops that poll for a moment before they sleep.

A thread that sleeps waiting for a reply is woken by the kernel some time after the
reply arrives: on this project's 2-core VM about 40 µs, a third of a one-by-one
submit to Redis (the server needs 30 µs for it). Polling the loop's sockets without
blocking for a short window first catches a reply that comes within it as soon as it
lands; a wait longer than the window then sleeps as before. It trades CPU time for
latency only while a loop waits, so it is cheap where replies come fast, and it is
adaptive where they do not (see ``SpinSelector.select``).

``new_event_loop`` makes one. Conveyor's own sync loop uses it (``Settings.loop_spin``);
an async application opts in with ``asyncio.Runner(loop_factory=new_event_loop)``.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import time
from collections.abc import Callable

#: The default window, in seconds: longer than a Redis round trip here (100-150 µs)
#: and than most durable PostgreSQL commits (about 400 µs).
DEFAULT_WINDOW = 0.0005

_SCORE_MAX = 8  # catches remembered; a miss costs 2, so spinning lasts while 2 in 3 catch
_PROBE_EVERY = 16  # while spinning does not pay, one wait in this many tries again
_NEAR = 8  # a miss counts if the wait ended within this many windows after the spin


class SpinSelector(selectors.DefaultSelector):
    """The platform's selector, polling without blocking for up to ``window`` seconds
    before a wait that would block.

    A window that ends with nothing ready is a miss when the wait ends soon after it
    (within ``_NEAR`` windows): replies a little slower than the window, where spinning
    costs CPU on every call and never catches one. Once misses outweigh catches the
    selector sleeps at once, trying a spin again once in ``_PROBE_EVERY`` waits; a try
    that catches something resumes spinning. A long wait (a call waiting for a task's
    result, an idle loop) is not held against spinning: one window is a small part of
    it, and the next fast reply is still caught. ``allow`` is asked before each spin:
    the sync portal says no while other threads wait on it, since a spinning thread
    keeps the GIL from them.
    """

    def __init__(self, window: float = DEFAULT_WINDOW, allow: Callable[[], bool] | None = None) -> None:
        super().__init__()
        self.window = window if spinning_helps() else 0.0
        self._allow = allow
        self._score = 0
        self._skipped = 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        window = self.window
        if window <= 0.0 or (timeout is not None and timeout <= 0.0) or not self._should_spin():
            return super().select(timeout)
        if timeout is not None and timeout < window:
            window = timeout
        poll = super().select
        end = time.perf_counter() + window
        while True:
            ready = poll(0)
            if ready:  # a probe that catches one resumes spinning at once
                self._score = min(max(self._score, 0) + 1, _SCORE_MAX)
                return ready
            if time.perf_counter() >= end:
                break
        ready = poll(None if timeout is None else max(timeout - window, 0.0))
        if time.perf_counter() - end < _NEAR * window:  # a reply just too slow: spinning for it is waste
            self._score = max(self._score - 2, -_SCORE_MAX)
        return ready

    def _should_spin(self) -> bool:
        if self._allow is not None and not self._allow():
            return False
        if self._score >= 0:
            return True
        self._skipped += 1
        if self._skipped < _PROBE_EVERY:
            return False
        self._skipped = 0
        return True


def spinning_helps() -> bool:
    """Whether this process may run on two CPUs or more: on one, a spinning waiter only
    delays the process it waits for."""
    try:
        return len(os.sched_getaffinity(0)) > 1
    except AttributeError:  # not on Linux
        return (os.cpu_count() or 1) > 1


def new_event_loop(
    window: float = DEFAULT_WINDOW, allow: Callable[[], bool] | None = None
) -> asyncio.AbstractEventLoop:
    """An asyncio event loop whose waits spin for up to ``window`` seconds first
    (``window=0``: the event loop policy's loop, as ``asyncio.new_event_loop``)."""
    if window <= 0.0:
        return asyncio.new_event_loop()
    return asyncio.SelectorEventLoop(SpinSelector(window, allow))
