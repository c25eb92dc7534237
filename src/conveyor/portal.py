"""The portal: one event loop that runs every sync call of a ``Conveyor`` app.

The loop has no thread of its own. A sync caller runs ("drives") it in the caller's
own thread until its call is done, so a call costs no thread switch: a loop thread
costs two per call (hand over, hand back), about 100 µs, more than the rest of a
one-by-one submit to Redis. While one thread drives, sync callers in other threads
hand their calls to the loop and wait; the driver's loop runs them alongside its own,
and when the driver's call is done, a waiter whose call is not takes over. So calls
from many threads still overlap on the loop's connections, and one thread at a time
uses them.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class PortalClosed(RuntimeError):
    """The app was closed while a sync call waited for its turn."""


class Portal:
    """An event loop driven in turn by the threads that call it (see the module docstring)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.pid = os.getpid()  # a forked child must not drive its parent's loop
        self._turn = threading.Condition()
        self._driven = False
        self._closed = False

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and return its result (or raise its exception)."""
        with self._turn:
            if self._closed:
                coro.close()
                raise PortalClosed("this Conveyor app's sync portal is closed")
            handed: Future[T] | None = None
            if self._driven:  # another thread drives: its loop runs this call too
                handed = asyncio.run_coroutine_threadsafe(coro, self.loop)
                handed.add_done_callback(self._wake)
            else:
                self._driven = True
        if handed is None:
            try:
                return self.loop.run_until_complete(coro)
            finally:
                self._leave()
        return self._wait(handed)

    def close(self, last: Coroutine[Any, Any, None]) -> None:
        """Run ``last`` (it closes what lives on the loop), then close the loop; calls
        still waiting for their turn raise ``PortalClosed``."""
        try:
            self.run(last)
        finally:
            with self._turn:
                while self._driven:
                    self._turn.wait()
                self._closed = self._driven = True
                self._turn.notify_all()
            self.loop.close()

    def _wait(self, handed: Future[T]) -> T:
        with self._turn:
            while self._driven and not handed.done() and not self._closed:
                self._turn.wait()
            if handed.done():
                return handed.result()
            if self._closed:
                raise PortalClosed("this Conveyor app was closed while the call waited")
            self._driven = True  # the driver left before this call was done: drive on
        try:
            return self.loop.run_until_complete(asyncio.wrap_future(handed, loop=self.loop))
        finally:
            self._leave()

    def _leave(self) -> None:
        with self._turn:
            self._driven = False
            self._turn.notify_all()

    def _wake(self, _done: Future[Any]) -> None:
        with self._turn:
            self._turn.notify_all()
