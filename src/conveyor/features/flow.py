"""Flow control: pause, rate limits, concurrency limits, circuit breakers, priority aging.

The rules live here once; engines only store and load them. Each engine keeps one
``FlowControl`` per key, ``("queue", name)`` or ``("task", name)``, holding both the
settings (``paused``, ``rate_limit``, ``concurrency``, ``breaker_threshold``,
``breaker_cooldown``) and the live state (token bucket, breaker). Inside its one
atomic claim step an engine builds a ``ClaimGate`` from the stored controls, the
number of running tasks per controlled key and the time, offers it ready tasks in
claim order (``claim_key``), and writes back the controls the gate ``changed``. Inside
its outcome step it calls ``record_outcome`` for each finished attempt of a task name
that has a breaker.

Rate limits are token buckets. ``"N/period"`` guarantees at most N claims in any
window of one period: the bucket holds ``burst = ceil(N / 100)`` tokens (one for
small rates, so claims are evenly spaced) and refills at ``(N + 1 - burst) / period``
per second, which is ``N / period`` when ``burst`` is 1.

Aging: a pending task's effective priority is its priority plus one per
``aging_interval`` seconds since ``run_at``, capped at 10. Within one priority level
the oldest task ages most, so the best task is always the head of some level: an
engine need only look at the first tasks of each of the 11 levels.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel

from conveyor.errors import InvalidInput
from conveyor.models import NAME_PATTERN, QUEUE_PATTERN
from conveyor.priority import MAX_PRIORITY, MIN_PRIORITY

Kind = Literal["queue", "task"]
Key = tuple[str, str]  # (kind, name)
KINDS: tuple[Kind, ...] = ("queue", "task")
MAX_LIMIT = 2**31 - 1  # concurrency and breaker thresholds: what every engine's integer holds
DEFAULT_COOLDOWN = 30.0
#: priority levels, best first: with aging on, an engine looks at the head of each
AGING_LEVELS: list[int] = list(range(MAX_PRIORITY, MIN_PRIORITY - 1, -1))

_PERIODS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0}
_PERIODS |= {"h": 3600.0, "hour": 3600.0, "d": 86400.0, "day": 86400.0}
_RATE = re.compile(r"^\s*(\d{1,12})\s*/\s*(\d{1,12}(?:\.\d{0,9})?|\.\d{1,9})?\s*([a-z]+)\s*$")


# --- rates ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` claims per ``period`` seconds, as a token bucket (see the module docstring)."""

    count: int
    period: float

    @property
    def burst(self) -> float:
        return float(max(1, math.ceil(self.count / 100)))

    @property
    def refill(self) -> float:
        """Tokens per second."""
        return (self.count + 1 - self.burst) / self.period


@functools.lru_cache(maxsize=256)
def parse_rate(text: str) -> Rate:
    """``"100/s"``, ``"5/m"``, ``"1000/h"``, ``"10/5s"``; ``InvalidInput`` otherwise."""
    match = _RATE.match(text.lower()) if isinstance(text, str) else None
    unit = None
    if match is not None:
        word = match.group(3)
        unit = _PERIODS.get(word) or _PERIODS.get(word.removesuffix("s"))
    if match is None or unit is None:
        raise InvalidInput(f"invalid rate limit {text!r}: expected COUNT/UNIT such as '100/s', '5/m' or '1000/h'")
    count, multiple = int(match.group(1)), float(match.group(2) or 1)
    if count < 1 or multiple <= 0:
        raise InvalidInput(f"invalid rate limit {text!r}: the count and period must be positive")
    return Rate(count, multiple * unit)


# --- controls ------------------------------------------------------------------------


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class FlowControl(BaseModel):
    """Settings and live state of one queue or task name (times in epoch seconds)."""

    kind: Kind
    name: str
    paused: bool = False
    rate_limit: str | None = None
    concurrency: int | None = None
    breaker_threshold: int | None = None
    breaker_cooldown: float = DEFAULT_COOLDOWN
    tokens: float | None = None  # None: a full bucket
    refilled_at: float = 0.0
    failures: int = 0
    breaker: BreakerState = BreakerState.CLOSED
    opened_until: float | None = None

    @property
    def key(self) -> Key:
        return (self.kind, self.name)

    @property
    def rate(self) -> Rate | None:
        return None if self.rate_limit is None else parse_rate(self.rate_limit)

    @property
    def counts_running(self) -> bool:
        """Whether the claim needs this key's running count."""
        return self.concurrency is not None or self.breaker is not BreakerState.CLOSED

    @property
    def inert(self) -> bool:
        """No setting left: the engine may delete it."""
        return (
            not self.paused
            and self.rate_limit is None
            and self.concurrency is None
            and self.breaker_threshold is None
            and self.breaker is BreakerState.CLOSED
        )


@dataclass(frozen=True, slots=True)
class QueueUpdate:
    """Change the flow settings of one queue (``kind="queue"``) or task name (``"task"``).

    ``None`` leaves a setting as it is; the names in ``reset`` go back to their
    defaults (``rate_limit``, ``concurrency``, ``breaker_threshold``,
    ``breaker_cooldown``, ``paused``, or ``breaker`` to close an open breaker).
    """

    name: str
    kind: Kind = "queue"
    paused: bool | None = None
    rate_limit: str | None = None
    concurrency: int | None = None
    breaker_threshold: int | None = None
    breaker_cooldown: float | None = None
    reset: frozenset[str] = frozenset()


_RESETTABLE = frozenset({"paused", "rate_limit", "concurrency", "breaker_threshold", "breaker_cooldown", "breaker"})


def apply_update(current: FlowControl | None, update: QueueUpdate) -> FlowControl:
    """The control after ``update``; ``InvalidInput`` (nothing changed) on bad input."""
    check_update(update)
    control = (current or FlowControl(kind=update.kind, name=update.name)).model_copy()
    defaults = FlowControl(kind=update.kind, name=update.name)
    for name in update.reset:
        if name == "breaker":
            control.breaker, control.failures, control.opened_until = BreakerState.CLOSED, 0, None
        else:
            setattr(control, name, getattr(defaults, name))
    if "rate_limit" in update.reset or update.rate_limit is not None:
        control.tokens = None  # a new rate starts with a full bucket
    for name in ("paused", "rate_limit", "concurrency", "breaker_threshold", "breaker_cooldown"):
        value = getattr(update, name)
        if value is not None:
            setattr(control, name, value)
    if control.breaker_threshold is None and control.breaker is not BreakerState.CLOSED:
        control.breaker, control.failures, control.opened_until = BreakerState.CLOSED, 0, None
    return control


def check_update(update: QueueUpdate) -> None:
    """``InvalidInput`` naming the first bad field of ``update``."""
    if update.kind not in KINDS:
        raise InvalidInput(f"invalid kind {update.kind!r}: expected 'queue' or 'task'")
    pattern = QUEUE_PATTERN if update.kind == "queue" else NAME_PATTERN
    if not re.fullmatch(pattern, update.name):  # a name no submit could use
        raise InvalidInput(f"invalid {update.kind} name {update.name!r}: expected {pattern}")
    unknown = set(update.reset) - _RESETTABLE
    if unknown:
        raise InvalidInput(
            f"cannot reset {', '.join(sorted(unknown))}: expected one of {', '.join(sorted(_RESETTABLE))}"
        )
    if update.rate_limit is not None:
        parse_rate(update.rate_limit)
    for label, value in (("concurrency", update.concurrency), ("breaker_threshold", update.breaker_threshold)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT):
            raise InvalidInput(f"invalid {label} {value!r}: expected a whole number from 1 to {MAX_LIMIT}")
    if update.breaker_cooldown is not None and not (0 < update.breaker_cooldown <= 86400 * 7):
        raise InvalidInput(f"invalid breaker_cooldown {update.breaker_cooldown!r}: expected 0 < seconds <= 604800")


# --- the claim gate ------------------------------------------------------------------


@dataclass(slots=True)
class _Budget:
    """What one key still allows in this claim."""

    control: FlowControl
    tokens: float = math.inf
    room: float = math.inf
    probe: bool = False  # a half-open breaker: at most one, only with none running
    blocked: bool = False


@dataclass(slots=True)
class ClaimGate:
    """One claim's view of the flow controls: which ready tasks it may still take."""

    controls: Mapping[Key, FlowControl]
    running: Mapping[Key, int]
    now: float
    changed: dict[Key, FlowControl] = field(default_factory=dict)
    blocked_queues: set[str] = field(default_factory=set)
    blocked_names: set[str] = field(default_factory=set)
    wake: float | None = None  # when a rate-limited or broken key may allow more
    _budgets: dict[Key, _Budget] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, control in self.controls.items():
            budget = self._budgets[key] = _Budget(control)
            self._open_budget(budget, self.running.get(key, 0))
            if budget.blocked:
                self._block(key)

    def _open_budget(self, b: _Budget, running: int) -> None:
        c, now = b.control, self.now
        if c.paused:
            b.blocked = True
            return
        if c.concurrency is not None:
            b.room = c.concurrency - running
        rate = c.rate
        if rate is not None:
            b.tokens = tokens_at(c, rate, now)
            if b.tokens < 1:
                self._wake_at(max(now, c.refilled_at) + (1 - b.tokens) / rate.refill)
        if c.breaker is BreakerState.OPEN:
            assert c.opened_until is not None
            if now < c.opened_until:
                self._wake_at(c.opened_until)
                b.blocked = True
                return
            b.probe = True
        if c.breaker is BreakerState.HALF_OPEN:
            b.probe = True
        if b.probe and running > 0:
            b.blocked = True  # the probe (or a task from before the breaker opened) still runs
        if b.room < 1 or b.tokens < 1:
            b.blocked = True

    def _wake_at(self, when: float) -> None:
        self.wake = when if self.wake is None else min(self.wake, when)

    def _block(self, key: Key) -> None:
        (self.blocked_queues if key[0] == "queue" else self.blocked_names).add(key[1])

    def ample(self, limit: int) -> bool:
        """Whether no control can bind within a claim of ``limit`` tasks: nothing is
        paused, broken or probing, and every budget holds ``limit`` more. Then an engine
        may take its plain claim and ``take`` the rows afterwards (all will pass), so
        limits that do not bind cost almost nothing."""
        return all(
            not b.blocked and not b.probe and b.room >= limit and b.tokens >= limit for b in self._budgets.values()
        )

    def admits(self, queue: str, name: str) -> bool:
        """Whether a ready task of ``queue`` and ``name`` may be claimed now."""
        return queue not in self.blocked_queues and name not in self.blocked_names

    def take(self, queue: str, name: str, count: int = 1) -> bool:
        """Claim ``count`` tasks of ``queue`` and ``name`` if allowed, spending the budgets
        (``count`` > 1 only after ``ample``, for tasks already taken in one statement)."""
        if not self.admits(queue, name):
            return False
        for key in (("queue", queue), ("task", name)):
            b = self._budgets.get(key)
            if b is None:
                continue
            c = b.control
            if b.tokens != math.inf:
                b.tokens -= count
                self.changed[key] = c  # its tokens are written back by ``commit``
            b.room -= count
            if b.probe:
                c.breaker = BreakerState.HALF_OPEN
                self.changed[key] = c
                b.blocked = True
            if b.room < 1 or b.tokens < 1:
                b.blocked = True
                rate = c.rate
                if b.tokens < 1 and rate is not None:
                    self._wake_at(self.now + (1 - b.tokens) / rate.refill)
            if b.blocked:
                self._block(key)
        return True

    def commit(self) -> list[FlowControl]:
        """Write the spent tokens into the controls; the controls this claim changed
        (the engine stores them in the same atomic step)."""
        for key, c in self.changed.items():
            b = self._budgets[key]
            if b.tokens != math.inf:
                c.tokens, c.refilled_at = b.tokens, max(self.now, c.refilled_at)
        return list(self.changed.values())


def tokens_at(c: FlowControl, rate: Rate, now: float) -> float:
    """The tokens in ``c``'s bucket at ``now`` (never counting time before the last take)."""
    if c.tokens is None:
        return rate.burst
    elapsed = max(0.0, now - c.refilled_at)
    return min(rate.burst, c.tokens + elapsed * rate.refill)


def running_keys(controls: Iterable[FlowControl]) -> list[Key]:
    """The keys whose running counts a claim needs."""
    return [c.key for c in controls if c.counts_running]


# --- breakers ------------------------------------------------------------------------


def record_outcome(c: FlowControl, ok: bool, now: float) -> bool:
    """Update ``c``'s breaker for one finished attempt of its task name; whether it changed.

    Closed: a success resets the count of consecutive failures, a failure adds one and
    opens the breaker at ``breaker_threshold``. Half-open: the probe's success closes
    it, its failure opens it again for another cool-down. Open: attempts that were
    already running when it opened change nothing.
    """
    if c.breaker_threshold is None:
        return False
    if c.breaker is BreakerState.OPEN:
        return False
    if ok:
        if c.breaker is BreakerState.CLOSED and c.failures == 0:
            return False
        c.breaker, c.failures, c.opened_until = BreakerState.CLOSED, 0, None
        return True
    c.failures += 1
    if c.breaker is BreakerState.HALF_OPEN or c.failures >= c.breaker_threshold:
        c.breaker, c.opened_until = BreakerState.OPEN, now + c.breaker_cooldown
    return True


def open_breakers(controls: Iterable[FlowControl]) -> list[str]:
    """Task names whose breaker is open or half-open, sorted."""
    return sorted(c.name for c in controls if c.kind == "task" and c.breaker is not BreakerState.CLOSED)


# --- aging ---------------------------------------------------------------------------


def effective_priority(priority: int, run_at: float, now: float, aging_interval: float | None) -> int:
    """``priority`` plus one per ``aging_interval`` waited since ``run_at``, capped at 10."""
    if not aging_interval or now <= run_at:
        return priority
    return min(MAX_PRIORITY, priority + int((now - run_at) // aging_interval))


def claim_key(priority: int, run_at: float, task_id: str, now: float, aging: float | None) -> tuple[int, float, str]:
    """Sort key of claim order: effective priority descending, then ``run_at``, then id."""
    return (-effective_priority(priority, run_at, now, aging), run_at, task_id)


__all__ = [
    "AGING_LEVELS",
    "BreakerState",
    "ClaimGate",
    "FlowControl",
    "QueueUpdate",
    "Rate",
    "apply_update",
    "check_update",
    "claim_key",
    "effective_priority",
    "open_breakers",
    "parse_rate",
    "record_outcome",
    "running_keys",
]
