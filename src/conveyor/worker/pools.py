"""Where attempts run: ``async`` (the worker's loop), ``threads`` or ``processes``.

Every pool exposes ``run(claimed, deadline_s) -> result`` raising the task's exception
or ``TaskTimeout``. Timeouts differ by pool, as SPEC §3 says: a coroutine is
cancelled, a thread is abandoned (Python cannot stop it) and reported, a child
process is killed and replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import multiprocessing as mp
import multiprocessing.connection as mpc
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from conveyor.errors import TaskTimeout

if TYPE_CHECKING:
    from conveyor.task import TaskDef


class Pool(Protocol):
    async def run(self, td: TaskDef[Any, Any], args: dict[str, Any], timeout: float | None) -> Any: ...

    async def close(self) -> None: ...


async def _with_timeout(aw: Any, timeout: float | None) -> Any:
    if timeout is None:
        return await aw
    try:
        async with asyncio.timeout(timeout):
            return await aw
    except TimeoutError as exc:
        raise TaskTimeout(f"timed out after {timeout} s") from exc


class AsyncPool:
    """Coroutines run on the worker's loop; sync functions in the default thread pool."""

    async def run(self, td: TaskDef[Any, Any], args: dict[str, Any], timeout: float | None) -> Any:
        if td.is_async:
            return await _with_timeout(td.fn(**args), timeout)
        return await _with_timeout(asyncio.to_thread(td.fn, **args), timeout)

    async def close(self) -> None:
        return None


class ThreadPool:
    """Sync functions on a fixed set of threads; a timed-out thread is abandoned."""

    def __init__(self, size: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="conveyor-task")

    async def run(self, td: TaskDef[Any, Any], args: dict[str, Any], timeout: float | None) -> Any:
        if td.is_async:
            return await _with_timeout(td.fn(**args), timeout)
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._executor, lambda: td.fn(**args))
        return await _with_timeout(asyncio.shield(fut), timeout)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


# --- processes --------------------------------------------------------------------------


def _child_main(app_path: str, conn: mpc.Connection) -> None:
    """Child process loop: receive (name, args), run, send ("ok", result) or ("err", ...)."""
    module_name, _, attr = app_path.partition(":")
    app = getattr(importlib.import_module(module_name), attr)
    loop = asyncio.new_event_loop()
    while True:
        try:
            name, args = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        try:
            td = app.get_task(name)
            result = loop.run_until_complete(td.fn(**args)) if td.is_async else td.fn(**args)
            conn.send(("ok", result))
        except BaseException as exc:
            tb = traceback.format_exc()
            try:
                conn.send(("err", exc, tb))
            except Exception:  # the exception itself does not pickle
                conn.send(("err", RuntimeError(f"{type(exc).__name__}: {exc}"), tb))


class _Child:
    def __init__(self, ctx: Any, app_path: str) -> None:
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=_child_main, args=(app_path, child_conn), daemon=True)
        self.proc.start()
        child_conn.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(1)
        self.conn.close()


class ChildError(Exception):
    """Carries the traceback text of an exception raised in a child process."""


class ProcessPool:
    """One child process per slot; the task's app is imported in each child by path.

    A timed-out or cancelled attempt kills its child, and a fresh one takes its place.
    """

    def __init__(self, size: int, app_path: str) -> None:
        if not app_path:
            raise ValueError("the processes pool needs the app's import path (module:attr)")
        self._ctx = mp.get_context("spawn")
        self._app_path = app_path
        self._idle: asyncio.Queue[_Child] = asyncio.Queue()
        for _ in range(size):
            self._idle.put_nowait(_Child(self._ctx, app_path))

    async def run(self, td: TaskDef[Any, Any], args: dict[str, Any], timeout: float | None) -> Any:
        child = await self._idle.get()
        ok = False
        try:
            status, *payload = await _with_timeout(self._call(child, td.name, args), timeout)
            ok = True
        finally:
            if ok:
                self._idle.put_nowait(child)
            else:  # timed out, cancelled or broken: the child may still be running it
                child.kill()
                self._idle.put_nowait(_Child(self._ctx, self._app_path))
        if status == "ok":
            return payload[0]
        exc, tb = payload
        exc.__cause__ = ChildError(tb)
        raise exc

    @staticmethod
    async def _call(child: _Child, name: str, args: dict[str, Any]) -> tuple[Any, ...]:
        """Send the call, then wait for the answer without blocking the loop or a thread."""
        child.conn.send((name, args))
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        fd = child.conn.fileno()
        loop.add_reader(fd, _set_done, ready)
        try:
            await ready
        finally:
            loop.remove_reader(fd)
        result: tuple[Any, ...] = child.conn.recv()
        return result

    async def close(self) -> None:
        while not self._idle.empty():
            child = self._idle.get_nowait()
            with contextlib.suppress(Exception):
                child.conn.close()
            child.proc.terminate()
            await asyncio.to_thread(child.proc.join, 2)


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def make_pool(kind: str, size: int, app_path: str | None) -> Pool:
    if kind == "async":
        return AsyncPool()
    if kind == "threads":
        return ThreadPool(size)
    if kind == "processes":
        return ProcessPool(size, app_path or "")
    raise ValueError(f"unknown pool {kind!r}: expected async, threads or processes")
