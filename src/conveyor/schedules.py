"""Named periodic schedules: 5-field cron expressions (UTC) or fixed intervals.

A schedule names a task, its args and options, and when it fires: ``cron`` (e.g.
``"*/5 * * * *"``, or an alias such as ``"@hourly"``; always UTC) or ``every`` N whole
seconds (ticks at multiples of N since the epoch, so every process agrees on them).
Schedules come from code (``@app.periodic(...)``) or config (``schedules:``).

Exactly once per tick: each firing is a submit with ``idempotency_key =
"cron:<name>:<tick epoch seconds>"`` on the schedule's queue, so any number of
schedulers (one in each worker, or ``conveyor scheduler``) may fire the same tick and
the engine keeps one task.

Missed ticks (nothing was running when they came) follow ``catch_up``:

* ``latest`` (default): when a scheduler starts, the most recent tick fires once
  (if no scheduler fired it yet), never a backlog;
* ``none``: only ticks that come while a scheduler runs;
* ``all``: each missed tick, the ``max_catch_up`` most recent at most.

A scheduler that stalled (a suspended machine) fires, of the ticks it slept
through, up to ``max_catch_up`` (``all``) or the newest one (``latest`` and ``none``:
a running scheduler that was slow does not drop a tick). A first pass cannot tell a
new schedule from one whose ticks were all missed: ``all`` then fires up to
``max_catch_up`` past ticks.
This module is pure: the loop that fires schedules is ``conveyor.worker.scheduler``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from croniter import CroniterBadDateError, croniter  # type: ignore[import-untyped]  # ships no type hints
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from conveyor.errors import InvalidInput
from conveyor.models import NAME_PATTERN, QUEUE_PATTERN, TaskSpec, to_dt
from conveyor.priority import parse_priority

CatchUp = Literal["latest", "none", "all"]
START_GRACE = 1.0  # seconds: on start, ``none`` still fires a tick this recent


def check_cron(expr: str) -> str:
    """A valid 5-field cron expression or ``@alias``, normalized; ``ValueError`` otherwise."""
    text = " ".join(expr.split())
    fields = text.split(" ")
    if not text or (not text.startswith("@") and len(fields) != 5):
        raise ValueError(f"invalid cron expression {expr!r}: expected 5 fields (minute hour day month weekday)")
    if not croniter.is_valid(text):
        raise ValueError(f"invalid cron expression {expr!r}")
    try:  # "0 0 31 2 *" parses, but every tick computation would then fail
        croniter(text, datetime.now(UTC)).get_next(float)
    except CroniterBadDateError:
        raise ValueError(f"invalid cron expression {expr!r}: it matches no date") from None
    return text


class ScheduleConfig(BaseModel):
    """One entry of the ``schedules:`` config section (its key is the schedule's name)."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(pattern=NAME_PATTERN)
    cron: str | None = None
    every: int | None = Field(default=None, ge=1, le=366 * 86400)  # whole seconds
    args: dict[str, Any] = Field(default_factory=dict)
    queue: str | None = Field(default=None, pattern=QUEUE_PATTERN)
    priority: int | str | None = None
    catch_up: CatchUp = "latest"
    max_catch_up: int = Field(default=10, ge=1, le=1000)

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        return None if v is None else check_cron(v)

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, v: Any) -> Any:
        """Checked here, not on each tick's submit (which would fail every time); the
        value is kept as given, so listings show ``low`` rather than 2."""
        if v is not None:
            try:
                parse_priority(v)
            except InvalidInput as exc:  # a ValueError, so pydantic reports it with the rest
                raise ValueError(exc.message) from exc
        return v

    @model_validator(mode="after")
    def _one_timing(self) -> ScheduleConfig:
        if (self.cron is None) == (self.every is None):
            raise ValueError("a schedule needs exactly one of cron or every")
        return self


class Schedule(ScheduleConfig):
    """A named schedule, as declared in code or config."""

    name: str = Field(pattern=NAME_PATTERN)

    @property
    def timing(self) -> str:
        return self.cron if self.cron is not None else f"every {self.every} s"

    def ticks(self, after: float, until: float, limit: int) -> list[float]:
        """The newest ``limit`` ticks ``t`` with ``after < t <= until``, oldest first."""
        found: list[float] = []
        if self.every is not None:
            tick = math.floor(until / self.every) * self.every
            while tick > after and len(found) < limit:
                found.append(float(tick))
                tick -= self.every
        else:
            assert self.cron is not None
            it = croniter(self.cron, datetime.fromtimestamp(math.floor(until) + 1, UTC))
            while len(found) < limit:
                tick = it.get_prev(float)
                if tick <= after:
                    break
                found.append(tick)
        return found[::-1]

    def next_ticks(self, now: float, count: int = 3) -> list[float]:
        """The next ``count`` ticks strictly after ``now``."""
        if self.every is not None:
            first = (math.floor(now / self.every) + 1) * self.every
            return [float(first + i * self.every) for i in range(count)]
        assert self.cron is not None
        it = croniter(self.cron, datetime.fromtimestamp(now, UTC))
        return [it.get_next(float) for _ in range(count)]

    def due(self, now: float, last: float | None) -> list[float]:
        """Ticks to fire at ``now``; ``last`` is this scheduler's previous pass (``None``
        on its first), so the catch-up policy applies to what it did not see."""
        many = self.max_catch_up if self.catch_up == "all" else 1
        if last is not None:
            return self.ticks(last, now, many)
        if self.catch_up == "none":
            return self.ticks(now - START_GRACE, now, 1)
        return self.ticks(-math.inf, now, many)

    def spec(self, tick: float) -> TaskSpec:
        """The submit for one tick; its idempotency key makes the tick fire once."""
        data: dict[str, Any] = {
            "name": self.task,
            "args": dict(self.args),
            "run_at": to_dt(tick),
            "idempotency_key": tick_key(self.name, tick),
        }
        if self.queue is not None:
            data["queue"] = self.queue
        if self.priority is not None:
            data["priority"] = self.priority
        return TaskSpec.model_validate(data)


def tick_key(name: str, tick: float) -> str:
    return f"cron:{name}:{int(tick)}"


def make_schedule(name: str, **fields: Any) -> Schedule:
    """A validated ``Schedule``; ``InvalidInput`` naming each problem (bad cron, ...)."""
    every = fields.get("every")
    if isinstance(every, timedelta):
        every = every.total_seconds()
    if isinstance(every, float):
        if not every.is_integer():
            raise InvalidInput(f"schedule {name!r}: every must be a whole number of seconds, got {every}")
        every = int(every)
    if every is not None:
        fields["every"] = every
    try:
        return Schedule(name=name, **fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'schedule'}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(f"invalid schedule {name!r}: {problems}", schedule=name) from exc
