"""Where attempts run: ``async`` (the worker's loop), ``threads`` or ``processes``.

Every pool exposes ``run(claimed, deadline_s) -> result`` raising the task's exception
or ``TaskTimeout``. Timeouts differ by pool, as SPEC §3 says: a coroutine is
cancelled, a thread is abandoned (Python cannot stop it) and reported, a child
process is killed and replaced.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import contextvars
import functools
import importlib
import logging
import multiprocessing as mp
import multiprocessing.connection as mpc
import pickle
import queue
import signal
import threading
import traceback
from collections.abc import Callable
from multiprocessing.reduction import ForkingPickler
from typing import TYPE_CHECKING, Any, Protocol

from conveyor import context
from conveyor.context import TaskContext
from conveyor.errors import TaskTimeout

if TYPE_CHECKING:
    from conveyor.task import TaskDef

log = logging.getLogger("conveyor.worker")


class Pool(Protocol):
    async def run(self, td: TaskDef[Any, Any], args: dict[str, Any], timeout: float | None) -> Any: ...

    async def close(self) -> None: ...


async def _with_timeout(aw: Any, timeout: float | None) -> Any:
    if timeout is None:
        return await aw
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            return await aw
    except TimeoutError as exc:
        if not deadline.expired():
            raise  # the task's own TimeoutError (a socket's, say): an ordinary error, retry rules apply
        raise TaskTimeout(f"timed out after {timeout} s") from exc


class _Threads:
    """``size`` daemon threads running sync calls, for the ``async`` and ``threads`` pools.

    A call that times out (or whose attempt is cancelled) before a thread took it never
    starts. One already running cannot be stopped: its thread is abandoned, a fresh
    thread takes its place so the pool keeps its size, and the abandoned one ends when
    its call returns. The threads are daemons, so a stuck call never holds up the exit.
    """

    def __init__(self, size: int, prefix: str) -> None:
        self._calls: queue.SimpleQueue[tuple[cf.Future[Any], Callable[[], Any]] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._abandoned: set[cf.Future[Any]] = set()
        self._prefix = prefix
        self._started = 0
        self._size = size
        for _ in range(size):
            self._spawn()

    def _spawn(self) -> None:
        self._started += 1
        name = f"{self._prefix}-{self._started}"
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def _serve(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                return
            call, fn = item
            if not call.set_running_or_notify_cancel():
                continue  # timed out while queued
            try:
                call.set_result(fn())
            except BaseException as exc:
                call.set_exception(exc)
            with self._lock:
                if call in self._abandoned:  # a replacement already serves in this thread's place
                    self._abandoned.discard(call)
                    return

    async def run(self, fn: Callable[[], Any], name: str, timeout: float | None) -> Any:
        call: cf.Future[Any] = cf.Future()
        self._calls.put((call, fn))
        try:
            return await _with_timeout(asyncio.wrap_future(call), timeout)
        except BaseException:
            with self._lock:
                if not call.cancel() and not call.done():
                    self._abandoned.add(call)
                    self._spawn()
                    log.warning("task %s: abandoned its thread, still running past its timeout", name)
            raise

    def close(self) -> None:
        for _ in range(self._size):
            self._calls.put(None)


def _in_context(td: TaskDef[Any, Any], args: dict[str, Any]) -> Callable[[], Any]:
    """The call, run in a copy of the caller's context (so ``conveyor.current()`` works)."""
    return functools.partial(contextvars.copy_context().run, td.fn, **args)


class AsyncPool:
    """Coroutines run on the worker's loop; sync functions on ``size`` daemon threads."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._threads: _Threads | None = None

    async def run(self, td: TaskDef[Any, Any], args: dict[str, Any], timeout: float | None) -> Any:
        if td.is_async:
            return await _with_timeout(td.fn(**args), timeout)
        if self._threads is None:
            self._threads = _Threads(min(self._size, 32), "conveyor-sync")  # coroutines may number thousands
        return await self._threads.run(_in_context(td, args), td.name, timeout)

    async def close(self) -> None:
        if self._threads is not None:
            self._threads.close()


class ThreadPool:
    """Sync functions on a fixed set of threads; a timed-out thread is abandoned and replaced."""

    def __init__(self, size: int) -> None:
        self._threads = _Threads(size, "conveyor-task")

    async def run(self, td: TaskDef[Any, Any], args: dict[str, Any], timeout: float | None) -> Any:
        if td.is_async:
            return await _with_timeout(td.fn(**args), timeout)
        return await self._threads.run(_in_context(td, args), td.name, timeout)

    async def close(self) -> None:
        self._threads.close()


# --- processes --------------------------------------------------------------------------


def _child_main(app_path: str, conn: mpc.Connection) -> None:
    """Child process loop: receive (name, args), run, send ("ok", result) or ("err", ...)."""
    # The worker owns shutdown. A terminal's Ctrl-C (or a service manager's SIGTERM) reaches
    # the whole process group and must not break the attempt this child runs; the worker
    # ends an idle child by closing its pipe, a stuck one by killing it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    module_name, _, attr = app_path.partition(":")
    app = getattr(importlib.import_module(module_name), attr)
    loop = asyncio.new_event_loop()
    conn.send(("ready",))  # imports done: from now on, time spent is the task's
    while True:
        try:
            name, args, fields = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        token = context.enter(_child_context(fields, app)) if fields else None
        try:
            td = app.get_task(name)
            result = loop.run_until_complete(td.fn(**args)) if td.is_async else td.fn(**args)
        except BaseException as exc:
            _send_error(conn, exc, traceback.format_exc())
        else:
            try:
                conn.send(("ok", result))
            except Exception:  # it does not pickle (a lambda, a lock, nested too deep): no JSON either
                conn.send(("ok", NotSent(shown(result))))
        finally:
            if token is not None:
                context.leave(token)


def _send_error(conn: mpc.Connection, exc: BaseException, tb: str) -> None:
    """Send ``exc`` as raised if the parent can rebuild it, else its type name and text
    (a lock among its fields, a constructor that needs other arguments)."""
    try:
        pickle.loads(ForkingPickler.dumps(exc))
        conn.send(("err", exc, tb))
    except Exception:
        conn.send(("err", RemoteError(type(exc).__name__, shown(exc, str)), tb))


def shown(value: Any, how: Callable[[Any], str] = repr) -> str:
    """The start of ``how(value)``, or its type if even that fails (nested too deep...)."""
    try:
        return how(value)[:200]
    except Exception:  # a RecursionError too
        return f"a {type(value).__name__}"


class NotSent:
    """Stands for a result the child could not send: not JSON either, so the attempt
    fails as in the other pools (``InvalidInput``)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


class RemoteError(Exception):
    """An exception the parent could not rebuild, by its type name and text; the
    failure is recorded under that type name (``conveyor_type``)."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.conveyor_type = type_name

    def __reduce__(self) -> tuple[Any, ...]:
        return (RemoteError, (self.conveyor_type, str(self)))


def _child_context(fields: tuple[Any, ...], app: Any) -> TaskContext:
    task_id, name, queue_name, attempt, workflow_id, request_id = fields
    return TaskContext(task_id, name, queue_name, attempt, workflow_id, app, request_id)


class _Child:
    def __init__(self, ctx: Any, app_path: str) -> None:
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=_child_main, args=(app_path, child_conn), daemon=True)
        self.proc.start()
        child_conn.close()
        self.ready = False

    async def started(self) -> None:
        """Wait until the child has imported the app, so its boot never counts
        against a task's timeout."""
        if not self.ready:
            hello = await _receive(self.conn)
            if hello != ("ready",):
                raise ChildError(f"process pool child sent {hello!r} instead of ready")
            self.ready = True

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(1)
        self.conn.close()


class ChildError(Exception):
    """Carries the traceback text of an exception raised in a child process."""


class ChildDied(Exception):
    """The child process running an attempt ended before answering (``os._exit``, a
    signal, the OOM killer): retried like any error, in a fresh child."""


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
            await child.started()
            try:
                status, *payload = await _with_timeout(self._call(child, td.name, args), timeout)
            except (EOFError, BrokenPipeError, ConnectionResetError) as gone:  # the child is gone
                await asyncio.to_thread(child.proc.join, 1)
                code = child.proc.exitcode
                how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                raise ChildDied(f"the child process running this task died ({how})") from gone
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
        ctx = context.current_or_none()
        child.conn.send((name, args, ctx.fields() if ctx is not None else None))
        return await _receive(child.conn)

    async def close(self) -> None:
        while not self._idle.empty():
            child = self._idle.get_nowait()
            with contextlib.suppress(Exception):
                child.conn.close()  # a child waiting for work reads EOF and returns
            if not child.ready:
                child.proc.kill()  # never used, perhaps still importing: nothing to finish
            await asyncio.to_thread(child.proc.join, 2)
            if child.proc.is_alive():
                child.proc.kill()


async def _receive(conn: mpc.Connection) -> tuple[Any, ...]:
    """Wait for a child's next message without blocking the loop or a thread."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = conn.fileno()
    loop.add_reader(fd, _set_done, ready)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
    message: tuple[Any, ...] = conn.recv()
    return message


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def make_pool(kind: str, size: int, app_path: str | None) -> Pool:
    if kind == "async":
        return AsyncPool(size)
    if kind == "threads":
        return ThreadPool(size)
    if kind == "processes":
        return ProcessPool(size, app_path or "")
    raise ValueError(f"unknown pool {kind!r}: expected async, threads or processes")
