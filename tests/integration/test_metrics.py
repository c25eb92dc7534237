"""Prometheus metrics, scraped for real: a worker subprocess's ``--metrics-port`` and the
cluster-wide figures the API serves, checked against what the test did."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from conveyor import Conveyor
from conveyor.metrics import cluster_metrics
from conveyor.task import SubmitOptions
from tests.integration.support import SpawnWorker, finished, wait_until


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text page, keyed by name and labels."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(page: dict[tuple[str, frozenset[tuple[str, str]]], float], metric: str, **labels: str) -> float:
    return page.get((metric, frozenset(labels.items())), 0.0)


def cluster_page(client: Conveyor) -> str:
    """What ``GET /metrics`` on the API serves: the engine's stats and metric totals."""

    async def read() -> bytes:
        backend = await client.backend()
        return cluster_metrics(await client.stats_async(), await backend.metrics_read())

    return client.run_sync(read()).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_worker_and_cluster_metrics_match_what_ran(client: Conveyor, workers: SpawnWorker, tmp_path: Path) -> None:
    port = free_port()
    workers(concurrency=4, queues=["default"], extra_args=["--metrics-port", str(port)])
    log = str(tmp_path / "log")
    ok = [client.submit("it.record", {"log": log, "tag": f"t{i}"}) for i in range(5)]
    flaky = client.submit("it.flaky", {"counter": str(tmp_path / "flaky"), "succeed_on": 2})
    doomed = client.submit("it.always_fails", {"counter": str(tmp_path / "doomed")})  # max_retries=2
    waiting = client.submit("it.record", {"log": log, "tag": "later"}, SubmitOptions(queue="idle", priority=9))
    finished(client, *ok, flaky, doomed)

    def scrape() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        page = samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
        done = value(page, "conveyor_attempts_total", queue="default", name="it.always_fails", state="failed")
        return page if done == 1 else None  # outcomes are counted when the attempt ends

    page = wait_until(scrape, 10, what="the worker's metrics to show every attempt")
    record = {"queue": "default", "name": "it.record"}
    assert value(page, "conveyor_attempts_total", **record, state="succeeded") == 5
    assert value(page, "conveyor_task_duration_seconds_count", **record) == 5
    assert value(page, "conveyor_retries_total", queue="default", name="it.flaky") == 1
    assert value(page, "conveyor_retries_total", queue="default", name="it.always_fails") == 2
    assert value(page, "conveyor_attempts_total", queue="default", name="it.flaky", state="succeeded") == 1
    assert value(page, "conveyor_task_wait_seconds_count", queue="default") == 5 + 2 + 3
    assert value(page, "conveyor_claim_latency_seconds_count") >= 1

    cluster = samples(cluster_page(client))
    assert value(cluster, "conveyor_tasks", state="succeeded") == 6
    assert value(cluster, "conveyor_tasks", state="failed") == 1
    assert value(cluster, "conveyor_dlq_size") == 1
    assert value(cluster, "conveyor_tasks_finished_total", state="succeeded") == 6
    assert value(cluster, "conveyor_tasks_submitted_total") == 8
    assert value(cluster, "conveyor_queue_depth", queue="idle", band="high") == 1
    assert value(cluster, "conveyor_queue_tasks", queue="idle", state="pending") == 1
    assert value(cluster, "conveyor_workers", state="offline") == 0
    assert client.get(waiting.id).state == "pending"  # the worker serves "default" only


def test_the_cluster_page_carries_every_workers_attempt_figures(
    client: Conveyor, workers: SpawnWorker, tmp_path: Path
) -> None:
    """No ``--metrics-port``: the workers add their figures to the engine, and what two
    of them counted is still there after both stopped."""
    first, second = (workers(concurrency=2, queues=["default"]) for _ in range(2))
    log = str(tmp_path / "log")
    ok = [client.submit("it.record", {"log": log, "tag": f"t{i}"}) for i in range(6)]
    doomed = client.submit("it.always_fails", {"counter": str(tmp_path / "doomed")})  # max_retries=2
    finished(client, *ok, doomed)

    record = {"queue": "default", "name": "it.record"}
    doomed_figures = {"queue": "default", "name": "it.always_fails"}
    expected = [  # each worker adds its figures on its own schedule: wait for all of them
        (("conveyor_attempts_total", {**doomed_figures, "state": "failed"}), 1),
        (("conveyor_task_wait_seconds_count", {"queue": "default"}), 9),
        (("conveyor_retries_total", doomed_figures), 2),
        (("conveyor_attempts_total", {**record, "state": "succeeded"}), 6),
    ]

    def scrape() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        page = samples(cluster_page(client))
        return page if all(value(page, name, **labels) == n for (name, labels), n in expected) else None

    page = wait_until(scrape, 10, what="the engine's totals to show every attempt")
    assert value(page, "conveyor_task_duration_seconds_count", **record) == 6
    assert value(page, "conveyor_task_duration_seconds_bucket", **record, le="+Inf") == 6
    assert value(page, "conveyor_task_duration_seconds_sum", **record) > 0
    assert value(page, "conveyor_attempts_total", **record, state="succeeded") == 6
    assert value(page, "conveyor_retries_total", queue="default", name="it.always_fails") == 2
    assert value(page, "conveyor_attempts_total", queue="default", name="it.always_fails", state="retrying") == 2

    for worker in (first, second):
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.proc.wait(timeout=30) == 0
    after = samples(cluster_page(client))
    assert value(after, "conveyor_task_duration_seconds_count", **record) == 6
    assert value(after, "conveyor_retries_total", queue="default", name="it.always_fails") == 2
