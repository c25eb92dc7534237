"""Helpers for the integration tests: polling with a deadline, and worker subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from conveyor import Conveyor, Task, TaskHandle
from conveyor.config import Settings, WorkerConfig

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
APP_PATH = "tests.integration.tasks_app:app"

# Timings every worker subprocess gets unless a test overrides them.
FAST_WORKER_ENV = {
    "CONVEYOR_WORKER__LEASE_SECONDS": "3",
    "CONVEYOR_WORKER__HEARTBEAT_INTERVAL": "0.2",
    "CONVEYOR_WORKER__METRICS_INTERVAL": "0.2",
    "CONVEYOR_WORKER__REAP_INTERVAL": "0.2",
    "CONVEYOR_WORKER__POLL_MAX": "0.05",
    "CONVEYOR_WORKER__SHUTDOWN_GRACE": "10",
    "CONVEYOR_WORKER__OFFLINE_AFTER": "5",
}


def wait_until(predicate: Callable[[], T], timeout: float = 15.0, what: str = "", interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


async def wait_for(
    predicate: Callable[[], Awaitable[T] | T], timeout: float = 10.0, what: str = "", interval: float = 0.01
) -> T:
    """``wait_until`` inside an event loop (in-process tests); ``predicate`` may be async."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        await asyncio.sleep(interval)


def transitions(task: Task) -> list[str]:
    """The names of a task's recorded transitions, in order."""
    return [h.transition for h in task.history]


def finished(app: Conveyor, *handles: TaskHandle, timeout: float = 20.0) -> list[Task]:
    """Wait until every task is terminal; return them in the order given."""

    def all_done() -> list[Task] | None:
        tasks = [app.get(h.id) for h in handles]
        return tasks if all(t.terminal for t in tasks) else None

    return wait_until(all_done, timeout, what="tasks to finish")


def fast_settings(url: str, **worker: Any) -> Settings:
    """Settings with short leases and polls, for in-process workers."""
    cfg = {
        "lease_seconds": 2.0,
        "heartbeat_interval": 0.1,
        "metrics_interval": 0.1,
        "reap_interval": 0.1,
        "poll_max": 0.05,
        "shutdown_grace": 5.0,
        **worker,
    }
    return Settings(url=url, worker=WorkerConfig(**cfg))


# --- worker subprocesses -------------------------------------------------------------------


def worker_command(app_path: str, concurrency: int, pool: str, queues: Iterable[str]) -> list[str]:
    """The real ``conveyor worker`` command line."""
    args = ["--app", app_path, "--concurrency", str(concurrency), "--pool", pool]
    if queues:
        args += ["--queues", ",".join(queues)]
    return [sys.executable, "-m", "conveyor.cli.main", "worker", *args]


@dataclass
class WorkerProcess:
    """A worker subprocess in its own process group (so teardown can kill its children)."""

    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker {self.pid} still running after {timeout} s:\n{self.output()}") from None

    def kill_group(self) -> None:
        """Kill the worker and everything it started (teardown)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


SpawnWorker = Callable[..., WorkerProcess]  # the `workers` fixture


def spawn_worker(
    url: str,
    workdir: Path,
    *,
    concurrency: int = 4,
    pool: str = "async",
    queues: Iterable[str] = (),
    env: dict[str, str] | None = None,
    app_path: str = APP_PATH,
    extra_args: Iterable[str] = (),
) -> WorkerProcess:
    """Start one worker subprocess on ``url``; its output goes to a log in ``workdir``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    full_env = {
        **clean,
        **FAST_WORKER_ENV,
        "CONVEYOR_URL": url,
        "PYTHONPATH": os.pathsep.join([str(ROOT), clean.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    n = len(list(workdir.glob("worker-*.log")))
    log = workdir / f"worker-{n}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*worker_command(app_path, concurrency, pool, queues), *extra_args],
            cwd=workdir,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return WorkerProcess(proc, log)


def wait_registered(app: Conveyor, worker: WorkerProcess, timeout: float = 20.0) -> None:
    """Wait until ``worker`` has registered (it is claiming from then on)."""

    def registered() -> bool:
        if worker.proc.poll() is not None:
            raise AssertionError(f"worker exited with {worker.proc.returncode}:\n{worker.output()}")
        return any(w.pid == worker.pid and w.state != "offline" for w in app.workers())

    wait_until(registered, timeout, what=f"worker {worker.pid} to register")
