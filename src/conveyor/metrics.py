"""Prometheus metrics: cluster-wide figures read at scrape time, and per-process histograms.

Two sources, because they answer different questions:

* ``cluster_metrics(stats)`` renders what the engine knows about the whole cluster
  (tasks per state, queue depth per band and state, workers per state, the DLQ,
  open breakers) from one ``stats()`` call. ``GET /metrics`` on the API serves it, so a
  scrape is right however many workers and API instances run, and costs one engine
  read, not one per queue. ``conveyor_tasks_submitted_total`` and
  ``conveyor_tasks_finished_total`` count the tasks the engine holds: a DLQ purge
  lowers them, which Prometheus reads as a counter reset.
* ``WorkerMetrics`` lives in each worker process (``conveyor worker --metrics-port N``):
  how long attempts ran, how long tasks waited from ``run_at`` to their start, how long
  claims took, and attempt outcomes and retries by queue and task name. Prometheus sums
  them across workers.

Label children are cached per (queue, name), so recording an attempt costs a few
microseconds on the worker's hot path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from conveyor.models import ClaimedTask, Stats
from conveyor.priority import Band
from conveyor.states import TERMINAL, State

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Task durations span milliseconds (no-op tasks) to hours (batch jobs).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
CLAIM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
OUTCOME_STATE = {"complete": State.SUCCEEDED.value, "retry": State.RETRYING.value, "fail": State.FAILED.value}


# --- cluster-wide, from the engine ------------------------------------------------------------


class ClusterCollector(Collector):
    """Metric families built from one ``Stats`` snapshot (see the module docstring)."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        tasks = GaugeMetricFamily("conveyor_tasks", "Tasks stored, by state.", labels=["state"])
        for state in State:
            tasks.add_metric([state.value], s.counts.get(state.value, 0))
        yield tasks

        submitted = CounterMetricFamily("conveyor_tasks_submitted", "Tasks the engine holds (every state).")
        submitted.add_metric([], sum(s.counts.values()))
        yield submitted
        finished = CounterMetricFamily("conveyor_tasks_finished", "Finished tasks the engine holds.", labels=["state"])
        for state in sorted(TERMINAL, key=lambda st: st.value):
            finished.add_metric([state.value], s.counts.get(state.value, 0))
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


def cluster_metrics(stats: Stats) -> bytes:
    """The Prometheus text of one ``Stats`` snapshot (what ``GET /metrics`` serves)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(stats))
    return generate_latest(registry)


# --- per worker process -------------------------------------------------------------------------


class WorkerMetrics:
    """One worker process's histograms and counters, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.duration = Histogram(
            "conveyor_task_duration_seconds",
            "How long attempts ran, by queue and task name.",
            ["queue", "name"],
            registry=self.registry,
            buckets=DURATION_BUCKETS,
        )
        self.wait = Histogram(
            "conveyor_task_wait_seconds",
            "From a task's run_at to the start of its attempt, by queue.",
            ["queue"],
            registry=self.registry,
            buckets=DURATION_BUCKETS,
        )
        self.claim = Histogram(
            "conveyor_claim_latency_seconds", "How long one claim took.", registry=self.registry, buckets=CLAIM_BUCKETS
        )
        self.attempts = Counter(
            "conveyor_attempts",
            "Attempts this worker finished, by queue, task name and the state they left the task in.",
            ["queue", "name", "state"],
            registry=self.registry,
        )
        self.retries = Counter(
            "conveyor_retries",
            "Attempts that ended in a retry, by queue and task name.",
            ["queue", "name"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def claimed(self, seconds: float) -> None:
        self.claim.observe(seconds)

    def started(self, ct: ClaimedTask, at: float) -> None:
        self._child(self.wait, ct.queue).observe(max(0.0, at - ct.run_at))

    def finished(self, ct: ClaimedTask, seconds: float, kind: str) -> None:
        """An attempt ended with outcome ``kind`` (``complete``, ``retry`` or ``fail``)."""
        self._child(self.duration, ct.queue, ct.name).observe(seconds)
        self._child(self.attempts, ct.queue, ct.name, OUTCOME_STATE.get(kind, kind)).inc()
        if kind == "retry":
            self._child(self.retries, ct.queue, ct.name).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` on ``port`` from a daemon thread (prometheus_client's server)."""
        start_http_server(port, addr=addr, registry=self.registry)
