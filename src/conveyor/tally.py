"""Attempt figures counted in a worker process, and the keys they are stored under.

Each worker counts how long its attempts ran and waited, and how they ended, in a
``Tally``; it adds what grew to the engine's metric totals (``MetricStore``) about once a
second, and ``conveyor.metrics`` renders those totals as Prometheus histograms and
counters. Kept apart from ``conveyor.metrics`` so a worker does not import
prometheus_client unless it serves ``--metrics-port``.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from functools import lru_cache

from conveyor.models import ClaimedTask
from conveyor.states import State

# Task durations span milliseconds (no-op tasks) to hours (batch jobs).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
OUTCOME_STATE = {"complete": State.SUCCEEDED.value, "retry": State.RETRYING.value, "fail": State.FAILED.value}

_SUM = len(DURATION_BUCKETS) + 1  # row layout: one count per bucket, then +Inf, then the sum
_OUTCOMES = ("complete", "retry", "fail")  # after the sum in a duration row
Row = list[float]


def bucket_label(bound: float) -> str:
    """A bucket bound as Prometheus writes it (``0.005``, ``1.0``, ``+Inf``)."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


_LE = [bucket_label(b) for b in (*DURATION_BUCKETS, float("inf"))]


class Tally:
    """One process's attempt figures: duration and wait histograms, outcomes, retries.

    Rows hold running totals (bucket counts not yet cumulative, then the sum, then the
    outcome counts); ``unsent()`` encodes what grew since the last ``sent()`` as engine
    keys, so a flush that fails is simply tried again with more in it.
    """

    def __init__(self) -> None:
        self.durations: dict[tuple[str, str], Row] = {}  # (queue, name) -> buckets, +Inf, sum, outcomes
        self.waits: dict[str, Row] = {}  # queue -> buckets, +Inf, sum
        self._sent: dict[str, float] = {}  # the totals the engine has (as of the last flush)
        self._taken: dict[str, float] = {}  # the totals behind the last unsent()

    def started(self, ct: ClaimedTask, at: float) -> None:
        row = self.waits.get(ct.queue)
        if row is None:
            row = self.waits[ct.queue] = [0.0] * (_SUM + 1)
        wait = max(0.0, at - ct.run_at)
        row[bisect_left(DURATION_BUCKETS, wait)] += 1
        row[_SUM] += wait

    def finished(self, ct: ClaimedTask, seconds: float, kind: str) -> None:
        """An attempt ended with outcome ``kind`` (``complete``, ``retry`` or ``fail``)."""
        key = (ct.queue, ct.name)
        row = self.durations.get(key)
        if row is None:
            row = self.durations[key] = [0.0] * (_SUM + 1 + len(_OUTCOMES))
        row[bisect_left(DURATION_BUCKETS, seconds)] += 1
        row[_SUM] += seconds
        if kind in _OUTCOMES:
            row[_SUM + 1 + _OUTCOMES.index(kind)] += 1

    def totals(self) -> dict[str, float]:
        """Every figure so far, as engine keys (see ``metric_key``)."""
        out: dict[str, float] = {}
        for (queue, name), row in self.durations.items():
            labels = (queue, name)
            _histogram_keys(out, "duration", labels, row)
            for i, kind in enumerate(_OUTCOMES):
                out[metric_key("attempts", labels, OUTCOME_STATE[kind])] = row[_SUM + 1 + i]
            out[metric_key("retries", labels, "")] = row[_SUM + 2]
        for queue, row in self.waits.items():
            _histogram_keys(out, "wait", (queue,), row)
        return out

    def unsent(self) -> dict[str, float]:
        """What grew since the last ``sent()``: the deltas to add to the engine's totals."""
        sent, self._taken = self._sent, self.totals()
        return {k: v - sent.get(k, 0.0) for k, v in self._taken.items() if v != sent.get(k, 0.0)}

    def sent(self, deltas: dict[str, float]) -> None:
        """The engine stored ``deltas``, the last ``unsent()``."""
        for k in deltas:
            self._sent[k] = self._taken[k]


@lru_cache(maxsize=65536)
def metric_key(family: str, labels: tuple[str, ...], part: str) -> str:
    """The engine key of one total: ``["duration", ["emails", "send"], "le=0.005"]``."""
    return json.dumps([family, list(labels), part], separators=(",", ":"), ensure_ascii=False)


def _histogram_keys(out: dict[str, float], family: str, labels: tuple[str, ...], row: Row) -> None:
    for i, le in enumerate(_LE):
        if row[i]:
            out[metric_key(family, labels, "le=" + le)] = row[i]
    out[metric_key(family, labels, "sum")] = row[_SUM]
