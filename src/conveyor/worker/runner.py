"""The worker: claims batches, runs attempts in a pool, heartbeats, reaps, shuts down cleanly.

Loops running side by side on one event loop:

* claim: takes exactly as many tasks as there is room for (``concurrency`` plus
  ``prefetch``), then sleeps on ``task_wait`` (same-process submits wake it at
  once; other processes' through the engine's own signal) or until the next
  scheduled task is due. ``prefetch="auto"`` (the default) claims ahead as many
  tasks as this worker's slots get through in ``AHEAD_SECONDS`` at their average
  run time (at most ``AHEAD_FACTOR`` times ``concurrency``; none for slow tasks):
  short tasks then start as soon as a slot frees instead of after a claim's round
  trip, in larger batches, while a task claimed ahead waits only a few milliseconds
  for its slot and slow tasks are never held where another worker could run them;
* completer: writes outcomes in batches (``worker.completer``);
* heartbeat: refreshes the registry row and extends leases; leases the engine says
  are lost (cancelled, reaped) stop their attempts;
* reaper: returns lapsed leases of dead workers to ``pending``;
* metrics: adds what the attempt tally counted to the engine's totals (``GET /metrics``).

Shutdown (SIGTERM/SIGINT or ``stop()``): stop claiming, give in-flight attempts
``shutdown_grace`` seconds, release what is left (unstarted ones without counting an
attempt), write every outcome, deregister. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from conveyor import __version__, context, tracing
from conveyor.backends.base import (
    Backend,
    ClaimParams,
    HeartbeatParams,
    Lease,
    Outcome,
    ReapParams,
    ReleaseParams,
    WaitParams,
)
from conveyor.context import TaskContext
from conveyor.errors import ConveyorError, InvalidInput, TaskTimeout
from conveyor.features.limits import configured_updates
from conveyor.ids import new_id
from conveyor.logs import worker_id_var
from conveyor.models import ClaimedTask, TaskError, WorkerInfo, WorkerState, to_dt
from conveyor.notify import run_notifier
from conveyor.retry import decide
from conveyor.tally import Tally
from conveyor.worker.completer import Completer
from conveyor.worker.pools import Pool, make_pool, shown
from conveyor.worker.scheduler import Scheduler

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.metrics import WorkerMetrics

log = logging.getLogger("conveyor.worker")


@dataclass(slots=True)
class _Attempt:
    claimed: ClaimedTask
    task: asyncio.Task[None] | None = None
    started: bool = False


@dataclass
class WorkerOptions:
    """Per-worker settings; unset ones come from ``settings.worker``."""

    queues: Sequence[str] = ()
    tags: Sequence[str] = ()
    concurrency: int | None = None
    pool: str | None = None
    app_path: str | None = None
    install_signals: bool = False
    scheduler: bool | None = None  # fire the app's schedules (default: settings.worker.scheduler)
    metrics: WorkerMetrics | None = None  # serve this process's figures (``conveyor worker --metrics-port``)
    notify: bool = True  # deliver notifications when ``settings.notifications`` has targets
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{new_id()[-6:]}")


# prefetch="auto": claim ahead about this many seconds of work, at most this many times
# the concurrency (Celery's default prefetch multiplier). Each new run weighs a tenth in
# the average run time: one slow task turns claiming ahead off at once, and short ones
# bring it back gradually (a tenth of the way each).
AHEAD_SECONDS = 0.005
AHEAD_FACTOR = 4
_RUN_WEIGHT = 0.1


def most_held(concurrency: int, prefetch: int | Literal["auto"]) -> int:
    """The most tasks a worker holds at once: its slots plus the most it claims ahead."""
    return concurrency + (AHEAD_FACTOR * concurrency if prefetch == "auto" else prefetch)


class Worker:
    def __init__(self, app: Conveyor, options: WorkerOptions | None = None) -> None:
        self.app = app
        self.opts = options or WorkerOptions()
        self.cfg = app.settings.worker
        self.id = self.opts.worker_id
        self.concurrency = self.opts.concurrency or self.cfg.concurrency
        self.pool_kind = self.opts.pool or self.cfg.pool
        self._run_avg: float | None = None  # average run time of this worker's attempts
        self.processed = 0
        self._inflight: dict[str, _Attempt] = {}
        self._slots = asyncio.Semaphore(self.concurrency)
        self._room = asyncio.Event()
        self._stop = asyncio.Event()
        self._stopping = False
        self._tracing = app.settings.tracing and tracing.available()
        self._backend: Backend | None = None
        self._pool: Pool | None = None
        self._completer: Completer | None = None
        self._metrics = self.opts.metrics
        self.tally = self._metrics.tally if self._metrics is not None else Tally()

    # --- lifecycle -------------------------------------------------------------------

    def stop(self) -> None:
        """Begin a graceful shutdown (safe to call from a signal handler on the loop)."""
        self._stopping = True
        self._stop.set()
        self._room.set()

    async def run(self) -> None:
        """Run until ``stop()``; returns after a clean shutdown."""
        worker_id_var.set(self.id)  # every log line of this worker (and its attempts) carries it
        backend = self._backend = await self.app.backend()
        self._pool = make_pool(self.pool_kind, self.concurrency, self.opts.app_path)
        self._completer = Completer(backend, self.cfg.finish_batch, self.cfg.finish_delay)
        if self.opts.install_signals:
            self._install_signals()
        await backend.worker_register(self._info())
        for update in configured_updates(self.app.settings, self.app.tasks):
            await backend.queue_update(update)  # code and config limits, cluster-wide
        log.info(
            "worker %s started: queues=%s pool=%s concurrency=%d",
            self.id,
            ",".join(self.opts.queues) or "*",
            self.pool_kind,
            self.concurrency,
        )
        loops = [
            asyncio.create_task(self._completer.run(), name="completer"),
            asyncio.create_task(
                self._every(self.cfg.heartbeat_interval, self._heartbeat, "heartbeat"), name="heartbeat"
            ),
            asyncio.create_task(self._reaper_loop(), name="reaper"),
            asyncio.create_task(
                self._every(self.cfg.metrics_interval, self._flush_metrics, "metrics flush"), name="metrics"
            ),
        ]
        run_scheduler = self.cfg.scheduler if self.opts.scheduler is None else self.opts.scheduler
        if run_scheduler and self.app.schedules:
            loops.append(asyncio.create_task(Scheduler(self.app).run(), name="scheduler"))
        notifications = self.app.settings.notifications
        if self.opts.notify and notifications.enabled:
            loops.append(asyncio.create_task(run_notifier(backend, notifications, self._stop), name="notifier"))
        try:
            await self._claim_loop()
        finally:
            await self._shutdown(loops)

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            if self._stopping:
                log.warning("second signal: exiting now; leases will lapse and be recovered")
                os._exit(1)
            log.info("received %s: finishing in-flight tasks", signal.Signals(signum).name)
            self.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)

    def _info(self, state: WorkerState = WorkerState.IDLE) -> WorkerInfo:
        now = to_dt(time.time())
        assert now is not None
        return WorkerInfo(
            id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=list(self.opts.queues),
            tags=list(self.opts.tags),
            concurrency=self.concurrency,
            pool=self.pool_kind,
            version=__version__,
            state=state,
            started_at=now,
            last_heartbeat_at=now,
        )

    # --- claiming ----------------------------------------------------------------------

    def capacity(self) -> int:
        """How many tasks this worker holds at most: running, plus claimed ahead."""
        most, avg = most_held(self.concurrency, self.cfg.prefetch), self._run_avg
        if self.cfg.prefetch != "auto" or (avg is not None and avg <= 0):
            return most
        if avg is None:
            return self.concurrency  # nothing measured yet
        return min(most, self.concurrency + int(self.concurrency * AHEAD_SECONDS / avg))

    async def _claim_loop(self) -> None:
        assert self._backend is not None
        backend, failures = self._backend, 0
        params = ClaimParams(
            self.id,
            0,
            self.cfg.lease_seconds,
            tuple(self.opts.queues),
            frozenset(self.opts.tags),
            aging_interval=self.app.settings.aging_interval or None,
        )
        while not self._stopping:
            room = self.capacity() - len(self._inflight)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                began = time.perf_counter()
                claim = await backend.task_claim(_with_limit(params, room))
                if self._metrics is not None:
                    self._metrics.claimed(time.perf_counter() - began)
                failures = 0
            except ConveyorError as exc:
                failures += 1
                log.warning("claim failed (%s); retrying", exc)
                await self._sleep(min(0.05 * 2**failures, 5.0))
                continue
            for claimed in claim.tasks:
                attempt = _Attempt(claimed)
                self._inflight[claimed.id] = attempt
                attempt.task = asyncio.create_task(self._run_attempt(attempt))
            if claim.tasks:
                await asyncio.sleep(0)  # let quick attempts finish before the next claim
                continue
            timeout = self.cfg.poll_max
            if claim.next_due is not None:
                timeout = max(0.0, min(timeout, claim.next_due - time.time()))
            await self._wait_for_work(timeout)

    async def _wait_for_work(self, timeout: float) -> None:
        assert self._backend is not None
        waiter = asyncio.create_task(self._backend.task_wait(WaitParams(tuple(self.opts.queues), timeout)))
        stopper = asyncio.create_task(self._stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for t in (waiter, stopper):
            t.cancel()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    # --- running ---------------------------------------------------------------------

    async def _run_attempt(self, attempt: _Attempt) -> None:
        ct = attempt.claimed
        try:
            async with self._slots:
                if self._stopping:
                    return  # never started: released (refunded) at shutdown
                attempt.started = True
                self.tally.started(ct, time.time())
                began = time.perf_counter()
                outcome = await (self._execute_traced(ct) if self._tracing else self._execute(ct))
                seconds = time.perf_counter() - began
                avg = self._run_avg
                self._run_avg = seconds if avg is None else avg + _RUN_WEIGHT * (seconds - avg)
                self.tally.finished(ct, seconds, outcome.kind)
                if outcome.kind != "complete" or log.isEnabledFor(logging.DEBUG):
                    _log_outcome(ct, outcome, seconds)
            assert self._completer is not None
            self._completer.add(outcome)
            self.processed += 1
        finally:
            if not (self._stopping and not attempt.started):
                self._inflight.pop(ct.id, None)
            self._room.set()

    async def _execute_traced(self, ct: ClaimedTask) -> Outcome:
        """``_execute`` in the attempt's span (only with tracing on: no cost otherwise)."""
        with tracing.attempt_span(True, ct) as span:
            outcome = await self._execute(ct)
            tracing.record_outcome(span, outcome.kind, outcome.error.type if outcome.error else None)
        return outcome

    async def _execute(self, ct: ClaimedTask) -> Outcome:
        assert self._pool is not None
        try:
            td = self.app.get_task(ct.name)
            td.check_args(ct.args)
        except InvalidInput as exc:  # unknown name or bad args: no retry can fix it
            return self._failure(ct, exc, (), (InvalidInput,))
        request_id = ct.headers.get(tracing.REQUEST_ID) if ct.headers else None
        token = context.enter(TaskContext(ct.id, ct.name, ct.queue, ct.attempts, ct.workflow_id, self.app, request_id))
        try:
            result = await self._pool.run(td, ct.args, ct.timeout)
        except asyncio.CancelledError as exc:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this attempt is being stopped (the task was cancelled, or shutdown)
            return self._failure(ct, exc, td.retry_on, td.permanent_on)  # the task raised it itself
        except BaseException as exc:  # SystemExit, KeyboardInterrupt... raised by task code: its failure
            return self._failure(ct, exc, td.retry_on, td.permanent_on)
        finally:
            context.leave(token)
        if result is not None and not _is_json(result):
            bad = InvalidInput(f"task {ct.name} returned a value that is not JSON-serializable: {shown(result)}")
            return self._failure(ct, bad, (), (InvalidInput,))
        return Outcome(ct.id, ct.lease_token, "complete", self.id, result=result, finished_at=time.time())

    def _failure(
        self,
        ct: ClaimedTask,
        exc: BaseException,
        retry_on: tuple[type[BaseException], ...],
        permanent_on: tuple[type[BaseException], ...],
    ) -> Outcome:
        try:
            d = decide(exc, ct.attempts, ct.retry, retry_on, permanent_on, max_retries=ct.max_retries)
        except Exception as bad:  # e.g. Retry(delay="soon"): the task's mistake, not a reason to retry
            exc = InvalidInput(f"{type(exc).__name__} could not be applied: {_text(bad)}")
            d = decide(exc, ct.attempts, ct.retry, (), (InvalidInput,), max_retries=ct.max_retries)
        error = TaskError(
            type="Timeout" if isinstance(exc, TaskTimeout) else getattr(exc, "conveyor_type", type(exc).__name__),
            message=_text(exc) or type(exc).__name__,
            traceback=_traceback(exc),
            retryable=d.retryable,
        )
        now = time.time()
        if d.retry:
            return Outcome(ct.id, ct.lease_token, "retry", self.id, error=error, run_at=now + d.delay, finished_at=now)
        return Outcome(ct.id, ct.lease_token, "fail", self.id, error=error, failure_reason=d.reason, finished_at=now)

    # --- background loops ----------------------------------------------------------------

    def _leases(self) -> list[Lease]:
        return [Lease(a.claimed.id, a.claimed.lease_token) for a in self._inflight.values()]

    async def _heartbeat(self) -> None:
        assert self._backend is not None
        if self._stopping:
            state = WorkerState.STOPPING
        else:
            state = WorkerState.BUSY if self._inflight else WorkerState.IDLE
        lost = await self._backend.worker_heartbeat(
            HeartbeatParams(self.id, state, self._leases(), self.cfg.lease_seconds, len(self._inflight), self.processed)
        )
        for task_id in lost:
            attempt = self._inflight.pop(task_id, None)
            if attempt and attempt.task:
                log.info("task %s: lease lost (cancelled or expired); stopping it", task_id)
                attempt.task.cancel()

    async def _every(self, interval: float, step: Callable[[], Awaitable[None]], what: str) -> None:
        """Run ``step`` every ``interval`` seconds until cancelled; a failure is logged and
        the next interval tries again (a bug must not silently stop lease renewal)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await step()
            except ConveyorError as exc:
                log.warning("%s failed (tried again next time): %s", what, exc)
            except Exception:
                log.exception("%s crashed; retrying at the next interval", what)

    async def _flush_metrics(self) -> None:
        """Add what the tally counted since the last flush to the engine's totals."""
        assert self._backend is not None
        deltas = self.tally.unsent()
        if deltas:
            await self._backend.metrics_add(deltas)
            self.tally.sent(deltas)

    async def _reaper_loop(self) -> None:
        assert self._backend is not None
        while True:
            try:
                reaped = await self._backend.task_reap_expired(ReapParams())
                if reaped:
                    log.info("recovered %d tasks whose lease lapsed", len(reaped))
            except ConveyorError as exc:
                log.warning("reaper failed: %s", exc)
            except Exception:
                log.exception("reaper crashed; retrying at the next interval")
            await asyncio.sleep(self.cfg.reap_interval)

    # --- shutdown ----------------------------------------------------------------------

    async def _shutdown(self, loops: list[asyncio.Task[Any]]) -> None:
        assert self._backend is not None and self._completer is not None and self._pool is not None
        self.stop()
        with contextlib.suppress(ConveyorError):
            await self._heartbeat()
        running = [a.task for a in self._inflight.values() if a.started and a.task]
        if running:
            log.info("waiting up to %.0f s for %d running tasks", self.cfg.shutdown_grace, len(running))
            await asyncio.wait(running, timeout=self.cfg.shutdown_grace)  # 0: release them at once
        leftovers = list(self._inflight.values())
        for attempt in leftovers:
            if attempt.task and not attempt.task.done():
                attempt.task.cancel()
        await asyncio.gather(*(a.task for a in leftovers if a.task), return_exceptions=True)
        for t in loops:
            t.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await self._completer.flush()
        try:
            await self._flush_metrics()
        except Exception as exc:  # figures must never stand in the way of releasing tasks
            log.warning("last metrics flush failed; this worker's latest figures are lost: %s", exc)
        leases = [Lease(a.claimed.id, a.claimed.lease_token, refund=not a.started) for a in leftovers]
        if leases:
            released = await self._backend.task_release(ReleaseParams(self.id, leases))
            log.info("released %d unfinished tasks back to pending", released)
        await self._backend.worker_deregister(self.id)
        await self._pool.close()
        log.info("worker %s stopped after %d tasks", self.id, self.processed)


def _log_outcome(ct: ClaimedTask, outcome: Outcome, seconds: float) -> None:
    """One line per attempt: successes at DEBUG, retries at INFO, failures at WARNING."""
    fields: dict[str, Any] = {
        "task_id": ct.id,
        "queue": ct.queue,
        "attempt": ct.attempts,
        "duration_ms": round(seconds * 1000, 3),
    }
    if ct.headers and tracing.REQUEST_ID in ct.headers:
        fields["request_id"] = ct.headers[tracing.REQUEST_ID]
    message = outcome.error.message if outcome.error else ""
    if outcome.kind == "complete":
        log.debug("task %s (%s) succeeded", ct.id, ct.name, extra=fields)
    elif outcome.kind == "retry":
        log.info("task %s (%s) will retry: %s", ct.id, ct.name, message, extra=fields)
    else:
        reason = outcome.failure_reason.value if outcome.failure_reason else "failed"
        log.warning("task %s (%s) failed (%s): %s", ct.id, ct.name, reason, message, extra=fields)


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _text(exc: BaseException) -> str:
    """``str(exc)``, even for an exception whose ``__str__`` itself fails."""
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__}: str() failed>"


def _traceback(exc: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(exc))
    except Exception:  # formatting calls str() on the exception too
        return "".join(traceback.format_tb(exc.__traceback__)) + f"{type(exc).__name__}: {_text(exc)}\n"


def _with_limit(params: ClaimParams, limit: int) -> ClaimParams:
    return dataclasses.replace(params, limit=limit)


async def run_worker(app: Conveyor, options: WorkerOptions) -> None:
    """Entry point used by ``conveyor worker``: run until signalled, then close."""
    worker = Worker(app, options)
    try:
        await worker.run()
    finally:
        await app.aclose()
