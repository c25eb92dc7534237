"""The portal: one event loop that runs every sync call of a ``Conveyor`` app.

A sync call with the loop to itself runs ("drives") the loop in the caller's own
thread, so it costs no thread switch: a loop thread costs two per call (hand over,
hand back), about 100 µs, more than the rest of a one-by-one submit to Redis.

Calls that arrive while the loop is driven are handed to it and run alongside, and
their callers wait for their own result. When the driving caller's call is done and
handed calls are still running, a helper thread drives the loop until they are all
done, and the next call to find the loop free drives it again itself. So calls from
many threads overlap on the loop's connections exactly as on a loop thread, and one
thread at a time uses them.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, Literal, TypeVar

from conveyor.spin import new_event_loop

T = TypeVar("T")


class PortalClosed(RuntimeError):
    """A sync call on an app that was closed."""


class Portal:
    """An event loop driven by its callers, or by a helper thread while calls handed to
    it are unfinished (see the module docstring)."""

    def __init__(self, spin: float = 0.0) -> None:
        # a spin (conveyor.spin) only while no other thread waits here: it holds the GIL
        self.loop = new_event_loop(spin, allow=lambda: not self._handed)
        self.pid = os.getpid()  # a forked child must not drive its parent's loop
        self._lock = threading.Condition(threading.Lock())
        self._driver: Literal["caller", "helper"] | None = None
        self._handed = 0  # handed calls not yet done
        self._helper: threading.Thread | None = None
        self._closed = False

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and return its result (or raise its exception)."""
        handed: Future[T] | None = None
        with self._lock:
            if self._closed:
                coro.close()
                raise PortalClosed("this Conveyor app was closed: its sync calls are refused")
            if self._driver is None:
                self._driver = "caller"
            else:  # the loop runs: this call runs on it too
                self._handed += 1
                handed = Future()
                self.loop.call_soon_threadsafe(self._start, coro, handed)
        if handed is not None:
            return handed.result()
        try:
            task = self.loop.create_task(self._stopping(coro))
            self.loop.run_forever()
            return task.result()
        finally:
            self._leave()

    def close(self, last: Coroutine[Any, Any, None]) -> None:
        """Run ``last`` (it closes what lives on the loop), wait for every unfinished
        call, stop the helper, and close the loop; later calls raise ``PortalClosed``."""
        try:
            self.run(last)
        finally:
            with self._lock:
                self._closed = True
                while self._driver is not None:
                    self._lock.wait()
                self._lock.notify_all()  # the helper exits
            if self._helper is not None:
                self._helper.join()
            self.loop.close()

    async def _stopping(self, coro: Coroutine[Any, Any, T]) -> T:
        """The driving caller's call: stops the loop the moment it ends (one loop pass
        sooner than ``run_until_complete``, whose stop waits for a done callback)."""
        try:
            return await coro
        finally:
            self.loop.stop()

    def _leave(self) -> None:
        """The driving caller's call is done: the helper drives on if handed calls are not."""
        with self._lock:
            if self._handed:
                self._driver = "helper"
                if self._helper is None:
                    self._helper = threading.Thread(target=self._help, name="conveyor-portal", daemon=True)
                    self._helper.start()
            else:
                self._driver = None
            self._lock.notify_all()

    def _start(self, coro: Coroutine[Any, Any, T], handed: Future[T]) -> None:
        self.loop.create_task(coro).add_done_callback(lambda task: self._finish(task, handed))

    def _finish(self, task: asyncio.Task[T], handed: Future[T]) -> None:
        """On the loop's thread: pass the outcome on; the helper stops once none is left."""
        try:
            if task.cancelled():
                handed.cancel()
            elif (exc := task.exception()) is not None:
                handed.set_exception(exc)
            else:
                handed.set_result(task.result())
        finally:
            with self._lock:
                self._handed -= 1
                if not self._handed and self._driver == "helper":
                    self.loop.stop()

    def _help(self) -> None:
        while True:
            with self._lock:
                while self._driver != "helper" and not self._closed:
                    self._lock.wait()
                if self._driver != "helper":
                    return  # closed
            self.loop.run_forever()  # until the last handed call is done (``_finish``)
            with self._lock:
                if not self._handed:
                    self._driver = None
                    self._lock.notify_all()
