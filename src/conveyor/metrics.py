"""Prometheus metrics: cluster-wide figures read at scrape time, and attempt figures.

Three sources, because they answer different questions:

* ``cluster_metrics(stats, totals)`` renders what the engine knows about the whole
  cluster, and ``GET /metrics`` on the API serves it, so a scrape is right however
  many workers and API instances run. From one ``stats()`` call: tasks per state,
  queue depth per band and state, workers per state, the DLQ, open breakers.
  ``conveyor_tasks_submitted_total`` and ``conveyor_tasks_finished_total`` are the
  task counts plus what DLQ purges and replays took away (``PURGED_KEY``,
  ``REPLAYED_KEY``, which the engine adds to in those steps), so they never go down.
* From the engine's metric totals (``MetricStore``): how long attempts ran, how long
  tasks waited from ``run_at`` to their start, attempt outcomes and retries, by queue
  and task name. Each worker counts them in a ``Tally`` and adds what is new to the
  engine's totals about once a second (``worker.metrics_interval``), so they survive
  the workers that measured them and need no scrape of the workers.
* ``WorkerMetrics`` (``conveyor worker --metrics-port N``): the same figures for one
  worker process only, plus how long its claims took.

Recording an attempt costs a dict lookup, a bisect and a few additions on the
worker's hot path; the encoding into engine keys happens at flush time.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from conveyor.backends.base import PURGED_KEY, REPLAYED_KEY
from conveyor.models import Stats
from conveyor.priority import Band
from conveyor.states import TERMINAL, State
from conveyor.tally import DURATION_BUCKETS, Tally, bucket_label

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

CLAIM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


# --- cluster-wide, from the engine ------------------------------------------------------------


class ClusterCollector(Collector):
    """Metric families built from one ``Stats`` snapshot (see the module docstring)."""

    def __init__(self, stats: Stats, totals: dict[str, float] | None = None) -> None:
        self.stats = stats
        self.totals = totals or {}

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        tasks = GaugeMetricFamily("conveyor_tasks", "Tasks stored, by state.", labels=["state"])
        for state in State:
            tasks.add_metric([state.value], s.counts.get(state.value, 0))
        yield tasks

        # Tasks only leave the store, or a final state, by a DLQ purge or replay: adding
        # back what those took keeps both counters monotonic.
        purged, replayed = self.totals.get(PURGED_KEY, 0.0), self.totals.get(REPLAYED_KEY, 0.0)
        submitted = CounterMetricFamily("conveyor_tasks_submitted", "Tasks submitted (stored, or since purged).")
        submitted.add_metric([], sum(s.counts.values()) + purged)
        yield submitted
        finished = CounterMetricFamily("conveyor_tasks_finished", "Tasks that reached a final state.", labels=["state"])
        for state in sorted(TERMINAL, key=lambda st: st.value):
            gone = purged + replayed if state is State.FAILED else 0.0
            finished.add_metric([state.value], s.counts.get(state.value, 0) + gone)
        yield finished

        depth = GaugeMetricFamily(
            "conveyor_queue_depth", "Ready (pending) tasks per queue and band.", labels=["queue", "band"]
        )
        per_state = GaugeMetricFamily("conveyor_queue_tasks", "Tasks per queue and state.", labels=["queue", "state"])
        paused = GaugeMetricFamily("conveyor_queue_paused", "1 while a queue is paused.", labels=["queue"])
        for q in s.queues:
            for band in Band:
                depth.add_metric([q.name, band.value], q.pending_by_band.get(band.value, 0))
            for state_name, count in sorted(q.counts.items()):
                per_state.add_metric([q.name, state_name], count)
            paused.add_metric([q.name], 1 if q.paused else 0)
        yield depth
        yield per_state
        yield paused

        workers = GaugeMetricFamily("conveyor_workers", "Registered workers, by state.", labels=["state"])
        for state_name, count in sorted(s.workers.items()):
            workers.add_metric([state_name], count)
        yield workers
        yield GaugeMetricFamily("conveyor_dlq_size", "Dead-lettered (failed) tasks.", value=s.dlq_size)
        yield GaugeMetricFamily(
            "conveyor_throughput_per_second",
            "Tasks finished per second over the last minute.",
            value=s.throughput_per_second,
        )
        open_count = GaugeMetricFamily("conveyor_breakers_open", "Task names whose breaker is open.")
        open_count.add_metric([], len(s.open_breakers))
        yield open_count
        breaker = GaugeMetricFamily(
            "conveyor_breaker_open", "1 for each task name whose breaker is open.", labels=["name"]
        )
        for name in s.open_breakers:
            breaker.add_metric([name], 1)
        yield breaker


def cluster_metrics(stats: Stats, totals: dict[str, float] | None = None) -> bytes:
    """The Prometheus text of one ``Stats`` snapshot and the engine's metric totals (what
    ``GET /metrics`` serves)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(stats, totals))
    registry.register(TotalsCollector(totals or {}))
    return generate_latest(registry)


# --- attempt figures: counted per process, summed in the engine -----------------------------

# family -> (metric name, help, label names); histograms carry "le=…" and "sum" parts.
_FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "duration": ("conveyor_task_duration_seconds", "How long attempts ran, by queue and task name.", ("queue", "name")),
    "wait": ("conveyor_task_wait_seconds", "From a task's run_at to the start of its attempt, by queue.", ("queue",)),
    "attempts": (
        "conveyor_attempts",
        "Attempts finished, by queue, task name and the state they left the task in.",
        ("queue", "name", "state"),
    ),
    "retries": ("conveyor_retries", "Attempts that ended in a retry, by queue and task name.", ("queue", "name")),
}


class TotalsCollector(Collector):
    """Histograms and counters built from metric totals (``Tally.totals()`` or the engine's)."""

    def __init__(self, totals: dict[str, float]) -> None:
        self.totals = totals

    def collect(self) -> Iterator[Metric]:
        hist: dict[str, dict[tuple[str, ...], dict[str, float]]] = {"duration": {}, "wait": {}}
        counts: dict[str, dict[tuple[str, ...], float]] = {"attempts": {}, "retries": {}}
        for key, total in self.totals.items():
            parsed = _parse_key(key)
            if parsed is None:
                continue  # not a key this version writes: skipped, never an error
            family, labels, part = parsed
            if family in hist:
                hist[family].setdefault(labels, {})[part] = total
            else:
                counts[family][(*labels, part) if family == "attempts" else labels] = total
        for family, series in hist.items():
            name, doc, label_names = _FAMILIES[family]
            metric = HistogramMetricFamily(name, doc, labels=list(label_names))
            for labels, parts in sorted(series.items()):
                metric.add_metric(list(labels), _cumulative(parts), parts.get("sum", 0.0))
            yield metric
        for family, values in counts.items():
            name, doc, label_names = _FAMILIES[family]
            counter = CounterMetricFamily(name, doc, labels=list(label_names))
            for labels, total in sorted(values.items()):
                counter.add_metric(list(labels), total)
            yield counter


def _parse_key(key: str) -> tuple[str, tuple[str, ...], str] | None:
    """``metric_key``'s parts, or None for anything else."""
    try:
        family, labels, part = json.loads(key)
        labels = tuple(str(v) for v in labels)
        wanted = len(_FAMILIES[family][2]) - (family == "attempts")  # an attempt's state is its part
    except (ValueError, TypeError, KeyError):
        return None
    if len(labels) != wanted or not isinstance(part, str) or (family == "attempts" and not part):
        return None
    return family, labels, part


def _cumulative(parts: dict[str, float]) -> list[tuple[str, float]]:
    """Prometheus buckets from stored per-bucket counts. Engines store only the buckets
    that were hit; every standard one is shown, so each series has the same buckets."""
    bounds = dict.fromkeys((*DURATION_BUCKETS, float("inf")), 0.0)
    for part, n in parts.items():
        with contextlib.suppress(ValueError):
            if part.startswith("le="):
                bound = float(part[3:])
                bounds[bound] = bounds.get(bound, 0.0) + n
    cumulative, buckets = 0.0, []
    for bound in sorted(bounds):
        cumulative += bounds[bound]
        buckets.append((bucket_label(bound), cumulative))
    return buckets


# --- per worker process -------------------------------------------------------------------------


class WorkerMetrics:
    """One worker process's figures (``--metrics-port``): its ``Tally`` and claim latency."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.tally = Tally()
        self.claim = Histogram(
            "conveyor_claim_latency_seconds", "How long one claim took.", registry=self.registry, buckets=CLAIM_BUCKETS
        )
        self.registry.register(_TallyCollector(self.tally))

    def claimed(self, seconds: float) -> None:
        self.claim.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` on ``port`` from a daemon thread (prometheus_client's server)."""
        start_http_server(port, addr=addr, registry=self.registry)


class _TallyCollector(Collector):
    """A live view of a tally (read at each scrape, from the server's thread)."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    def collect(self) -> Iterator[Metric]:
        for _ in range(3):  # the worker's loop may add a row mid-read: read again
            try:
                totals = self.tally.totals()
            except RuntimeError:
                continue
            yield from TotalsCollector(totals).collect()
            return
