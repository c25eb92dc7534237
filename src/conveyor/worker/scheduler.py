"""The scheduler loop: fires the app's periodic schedules (``conveyor.schedules``).

Every worker runs one by default (``worker.scheduler: false`` or ``--no-scheduler``
turns it off), and ``conveyor scheduler --app`` runs one alone. Any number may run:
each tick is submitted with its idempotency key, so the engine stores it once.

One pass (``fire``) computes the due ticks of every schedule and submits them all in
one atomic ``enqueue_many``; a schedule whose submit is refused (bad args, unknown
queue rules) is logged and skipped, and a failed submit (engine down, queue full)
is retried on the next pass, since the pass is only recorded once it succeeded. Between
passes the loop sleeps until the earliest next tick (at most ``max_sleep``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from conveyor.errors import ConveyorError, InvalidInput
from conveyor.models import TaskSpec
from conveyor.schedules import Schedule
from conveyor.task import TaskHandle

if TYPE_CHECKING:
    from conveyor.app import Conveyor

log = logging.getLogger("conveyor.scheduler")


class Scheduler:
    """Fires ``schedules`` (default: all of the app's) until ``stop()``."""

    def __init__(self, app: Conveyor, schedules: list[Schedule] | None = None, *, max_sleep: float = 30.0) -> None:
        self.app = app
        self.schedules = list(app.schedules.values()) if schedules is None else list(schedules)
        self.max_sleep = max_sleep
        self.fired = 0  # tasks this scheduler created (ticks others fired are not counted)
        self._last: dict[str, float] = {}
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def fire(self, now: float | None = None) -> list[TaskHandle]:
        """One pass: submit every due tick; returns the handles of the tasks it created."""
        now = time.time() if now is None else now
        specs: list[TaskSpec] = []
        for schedule in self.schedules:
            try:
                specs += [schedule.spec(tick) for tick in schedule.due(now, self._last.get(schedule.name))]
            except (InvalidInput, ValueError) as exc:
                log.error("schedule %s: cannot build its task: %s", schedule.name, exc)
        handles = await self._submit(specs) if specs else []
        for schedule in self.schedules:
            self._last[schedule.name] = now
        created = [h for h in handles if h.created]
        self.fired += len(created)
        if created:
            log.info("fired %d scheduled tasks: %s", len(created), ", ".join(h.id for h in created))
        return created

    async def _submit(self, specs: list[TaskSpec]) -> list[TaskHandle]:
        try:
            return await self.app.enqueue_many_async(specs)
        except InvalidInput:
            pass
        # one bad schedule must not hold up the others: submit them one by one
        handles: list[TaskHandle] = []
        for spec in specs:
            try:
                handles += await self.app.enqueue_many_async([spec])
            except InvalidInput as exc:
                log.error("schedule key %s refused: %s", spec.idempotency_key, exc)
        return handles

    def sleep_for(self, now: float) -> float:
        """Seconds until the earliest next tick (a little after it), capped at ``max_sleep``."""
        upcoming = [s.next_ticks(now, 1)[0] for s in self.schedules]
        return max(0.0, min([self.max_sleep, *(t - now + 0.005 for t in upcoming)]))

    async def run(self) -> None:
        """Fire due ticks until ``stop()``; engine errors are logged and retried."""
        if not self.schedules:
            return
        names = ", ".join(f"{s.name} ({s.timing})" for s in self.schedules)
        log.info("scheduler started: %s", names)
        while not self._stop.is_set():
            try:
                await self.fire()
            except ConveyorError as exc:
                log.warning("scheduler pass failed (%s); retrying", exc)
                await self._sleep(1.0)
                continue
            await self._sleep(self.sleep_for(time.time()))

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
