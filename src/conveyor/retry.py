"""Retry policy: exponential backoff with full jitter, and error classification.

The worker asks ``decide`` what to do after a failed attempt; backends only record
the answer (``retrying`` with a ``run_at``, or ``failed`` with a reason).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from conveyor.errors import Permanent, Retry, TaskTimeout
from conveyor.states import FailureReason

MAX_DELAY = 30 * 86400.0  # seconds between attempts at most: RetryPolicy.max, Retry(delay=...)


class RetryPolicy(BaseModel):
    """Delay before retry n (0-based) is uniform in ``[0, min(max, base * factor**n)]``."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    max_retries: int = Field(default=3, ge=0, le=1000)
    base: float = Field(default=1.0, ge=0, le=86400)
    factor: float = Field(default=2.0, ge=1, le=100)
    max: float = Field(default=300.0, ge=0, le=MAX_DELAY)
    jitter: bool = True

    def backoff(self, retry_number: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the ``retry_number``-th retry (0 = first retry)."""
        cap = min(self.max, self.base * self.factor ** min(retry_number, 64))
        if not self.jitter:
            return cap
        return (rng or random).uniform(0, cap)


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after a failed attempt: retry after ``delay``, or fail for ``reason``."""

    retry: bool
    delay: float = 0.0
    reason: FailureReason | None = None
    retryable: bool = True


def decide(
    exc: BaseException,
    attempts: int,
    policy: RetryPolicy,
    retry_on: Sequence[type[BaseException]] = (Exception,),
    permanent_on: Sequence[type[BaseException]] = (),
    max_retries: int | None = None,
) -> Decision:
    """Classify ``exc`` and apply the policy; ``attempts`` counts the one that just failed.

    ``max_retries`` overrides ``policy.max_retries`` (a task stores its own).

    ``Permanent`` and ``permanent_on`` win over ``retry_on``; an exception matching
    neither list is permanent. ``Retry(delay=...)`` overrides the backoff.
    """
    if isinstance(exc, Permanent) or (permanent_on and isinstance(exc, tuple(permanent_on))):
        return Decision(retry=False, reason=FailureReason.PERMANENT_ERROR, retryable=False)
    retryable = isinstance(exc, (Retry, TaskTimeout, *retry_on))
    if not retryable:
        return Decision(retry=False, reason=FailureReason.PERMANENT_ERROR, retryable=False)
    limit = policy.max_retries if max_retries is None else max_retries
    if attempts > limit:
        reason = FailureReason.TIMEOUT if isinstance(exc, TaskTimeout) else FailureReason.RETRIES_EXHAUSTED
        return Decision(retry=False, reason=reason)
    if isinstance(exc, Retry) and exc.delay is not None:
        delay = float(exc.delay)  # a TypeError for a delay that is no number: the task's mistake
        # NaN or negative: at once; past MAX_DELAY (or infinite): capped, so run_at stays a date
        return Decision(retry=True, delay=min(delay, MAX_DELAY) if delay > 0 else 0.0)
    return Decision(retry=True, delay=policy.backoff(attempts - 1))
