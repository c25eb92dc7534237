"""Task functions the integration tests run, in worker subprocesses and in-process.

Workers import ``tests.integration.tasks_app:app`` (its URL comes from
``CONVEYOR_URL``); tests build their own client with ``build_app(url)``, which
registers the same tasks under the same names, so submits get the same defaults.

Tasks report what happened through files named by their arguments (a worker
subprocess cannot share memory with the test): ``log`` files get one line per
execution, ``counter`` files one line per attempt (with its time), and ``marks``
folders one small file per event, named ``<key>.<event>.<pid>.<random>``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from conveyor import Conveyor, Permanent, Retry, RetryPolicy, current

FAST = RetryPolicy(max_retries=3, base=0.05, factor=2, max=0.2)
TIMEOUT = 0.3  # the run-time limit of the ``sleepy_*`` tasks


# --- reporting helpers (also used by the tests to read reports back) ----------------------


def mark(marks: str, key: str, event: str) -> None:
    """Record one event in its own file, so concurrent writers never interleave."""
    name = f"{key}.{event}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    Path(marks, name).touch()


def marks_of(marks: str | Path, event: str) -> list[tuple[str, int]]:
    """``[(key, pid)]`` of every ``event`` recorded in the folder ``marks``."""
    found = []
    for p in Path(marks).iterdir():
        key, ev, pid, _ = p.name.rsplit(".", 3)
        if ev == event:
            found.append((key, int(pid)))
    return found


def count_attempt(counter: str) -> int:
    """Append this attempt's time to ``counter``; returns the attempt number (1-based)."""
    with open(counter, "a") as f:
        f.write(f"{time.time()}\n")
    return len(attempt_times(counter))


def attempt_times(counter: str | Path) -> list[float]:
    p = Path(counter)
    return [float(x) for x in p.read_text().split()] if p.exists() else []


def read_log(log: str | Path) -> list[str]:
    p = Path(log)
    return p.read_text().split() if p.exists() else []


# --- the tasks ------------------------------------------------------------------------------


def record(log: str, tag: str) -> str:
    """Append ``tag`` to ``log`` (execution order, with concurrency 1)."""
    with open(log, "a") as f:
        f.write(tag + "\n")
    return tag


def flaky(counter: str, succeed_on: int) -> int:
    """Fail with ``RuntimeError`` until attempt ``succeed_on``; returns that attempt number."""
    n = count_attempt(counter)
    if n < succeed_on:
        raise RuntimeError(f"attempt {n} fails")
    return n


def always_fails(counter: str) -> None:
    count_attempt(counter)
    raise ValueError("boom")


def bad_input(counter: str) -> None:
    count_attempt(counter)
    raise Permanent("this input can never work")


def retry_later(counter: str, delay: float) -> int:
    """Ask for a retry after ``delay`` seconds on the first attempt; succeed on the next."""
    n = count_attempt(counter)
    if n == 1:
        raise Retry(delay=delay)
    return n


def needs_fix(flag: str) -> str:
    """Fails permanently until the file ``flag`` exists (an operator's fix), then succeeds."""
    if not Path(flag).exists():
        raise Permanent("not fixed yet")
    return "fixed"


async def sleepy_async(counter: str, seconds: float, own_timeout: bool = False) -> str:
    count_attempt(counter)
    if own_timeout:  # a timeout of the task's own (a socket's), well within the task's limit
        raise TimeoutError("the socket timed out")
    await asyncio.sleep(seconds)
    return "woke up"


def sleepy_sync(counter: str, seconds: float, own_timeout: bool = False) -> str:
    count_attempt(counter)
    if own_timeout:
        raise TimeoutError("the socket timed out")
    time.sleep(seconds)
    return "woke up"


class _Odd(BaseException):
    """Not an ``Exception``: task code may still raise it."""


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class _Locked(Exception):
    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()  # does not pickle: a processes-pool child cannot send it


class _TwoArgs(Exception):
    def __init__(self, a: int, b: int) -> None:  # pickles, but cannot be rebuilt from its args
        super().__init__(f"{a}+{b}")


def _raise(exc: BaseException) -> Any:
    raise exc


def _deep() -> Any:
    value: Any = 1
    for _ in range(2000):
        value = [value]
    return value


_MISDEEDS: dict[str, Any] = {
    "exit": lambda: _raise(SystemExit(3)),
    "interrupt": lambda: _raise(KeyboardInterrupt("from the task")),
    "cancelled": lambda: _raise(asyncio.CancelledError("raised by the task itself")),
    "base": lambda: _raise(_Odd("a BaseException")),
    "unprintable": lambda: _raise(_Unprintable()),
    "far_retry": lambda: _raise(Retry(delay=1e12)),
    "bad_retry": lambda: _raise(Retry(delay="soon")),  # type: ignore[arg-type]
    "die": lambda: os._exit(1),  # the process running it ends at once (a processes-pool child)
    "lambda": lambda: lambda: 1,
    "locked": lambda: _raise(_Locked()),
    "two_args": lambda: _raise(_TwoArgs(1, 2)),
    "deep": _deep,
}


def misbehave(kind: str) -> Any:
    """Task code doing what a worker must survive (see ``test_worker_inprocess``)."""
    return _MISDEEDS[kind]()


async def misbehave_async(kind: str) -> Any:
    return misbehave(kind)


async def slow(marks: str, key: str, seconds: float) -> str:
    """Mark ``start``, sleep, mark ``done``; a cancelled attempt marks ``stopped``."""
    mark(marks, key, "start")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        mark(marks, key, "stopped")
        raise
    mark(marks, key, "done")
    return key


async def stubborn(marks: str, key: str, seconds: float) -> str:
    """Like ``slow`` but ignores cancellation and returns anyway: a late completion."""
    mark(marks, key, "start")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        mark(marks, key, "stopped")
    return "late"


def once(marks: str, key: str, pause: float = 0.0) -> str:
    """Mark one execution of ``key`` (the caller checks there is exactly one)."""
    mark(marks, key, "ran")
    if pause:
        time.sleep(pause)
    return key


def where_sync(x: int) -> dict[str, Any]:
    """Where a sync function ran: process and thread."""
    return {"x": x, "pid": os.getpid(), "thread": threading.current_thread().name, "kind": "sync"}


async def where_async(x: int) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"x": x, "pid": os.getpid(), "thread": threading.current_thread().name, "kind": "async"}


def sum_parents(extra: int = 0) -> int:
    """Sum of the parents' results (a fan-in node), read through ``conveyor.current()``."""
    return extra + sum(current().parent_results().values())


async def sum_parents_async(extra: int = 0) -> int:
    return extra + sum((await current().parent_results_async()).values())


def whoami() -> dict[str, Any]:
    """The attempt's context as task code sees it."""
    ctx = current()
    return {"id": ctx.task_id, "name": ctx.name, "attempt": ctx.attempt, "workflow_id": ctx.workflow_id}


def build_app(url: str | None = None, **kwargs: Any) -> Conveyor:
    """A ``Conveyor`` on ``url`` (``CONVEYOR_URL`` when ``None``) with every test task."""
    app = Conveyor(url, **kwargs)
    plain = {"retry": FAST}
    app.task(record, name="it.record", **plain)
    app.task(flaky, name="it.flaky", **plain)
    app.task(always_fails, name="it.always_fails", max_retries=2, **plain)
    app.task(bad_input, name="it.bad_input", **plain)
    app.task(retry_later, name="it.retry_later", **plain)
    app.task(needs_fix, name="it.needs_fix", **plain)
    app.task(sleepy_async, name="it.sleepy_async", timeout=TIMEOUT, max_retries=1, **plain)
    app.task(sleepy_sync, name="it.sleepy_sync", timeout=TIMEOUT, max_retries=1, **plain)
    app.task(slow, name="it.slow", **plain)
    app.task(misbehave, name="it.misbehave", max_retries=1, **plain)
    app.task(misbehave_async, name="it.misbehave_async", max_retries=1, **plain)
    app.task(stubborn, name="it.stubborn", **plain)
    app.task(once, name="it.once", **plain)
    app.task(where_sync, name="it.where_sync", **plain)
    app.task(where_async, name="it.where_async", **plain)
    app.task(sum_parents, name="it.sum_parents", **plain)
    app.task(sum_parents_async, name="it.sum_parents_async", **plain)
    app.task(whoami, name="it.whoami", **plain)
    return app


# Workers find their engine through ``CONVEYOR_URL``; an import without it (a process
# pool child only looks tasks up by name) gets a private in-memory store.
app = build_app(os.environ.get("CONVEYOR_URL") or "memory://tasks-app")
