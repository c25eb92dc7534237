"""The Grafana board cannot rot: every metric its queries use exists in real output."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from conveyor import Conveyor
from conveyor.backends.base import ClaimParams, Outcome
from conveyor.features.flow import QueueUpdate
from conveyor.metrics import WorkerMetrics, cluster_metrics
from conveyor.models import ClaimedTask, TaskError
from conveyor.retry import RetryPolicy
from conveyor.states import FailureReason

ROOT = Path(__file__).resolve().parents[2]
BOARD = ROOT / "deploy" / "grafana" / "conveyor-dashboard.json"
METRIC = re.compile(r"\bconveyor_[a-z_]+\b")


def exposed_names(text: str) -> set[str]:
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


API_JOB = re.compile(r'\b(conveyor_[a-z_]+)\{job="conveyor-api"\}')


def board_exprs() -> list[str]:
    board = json.loads(BOARD.read_text())
    exprs = [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]
    assert exprs, "the board has no queries"
    return exprs


def board_names() -> set[str]:
    return {name for expr in board_exprs() for name in METRIC.findall(expr)}


async def test_every_metric_the_board_uses_is_exposed() -> None:
    app = Conveyor("memory://grafana-board")
    backend = await app.backend()
    await backend.queue_update(QueueUpdate("some.task", kind="task", breaker_threshold=1))
    await app.submit_async("some.task", {"x": 1})
    (held,) = (await backend.task_claim(ClaimParams("w1", 1, 30.0))).tasks
    error = TaskError(type="ValueError", message="boom", traceback="", retryable=False)
    fail = Outcome(held.id, held.lease_token, "fail", error=error, failure_reason=FailureReason.PERMANENT_ERROR)
    assert await backend.task_finish_many([fail]) == [True]  # opens the breaker, fills the DLQ
    await app.submit_async("some.task", {"x": 2})
    stats = await app.stats_async()
    assert stats.open_breakers == ["some.task"]
    worker = WorkerMetrics()
    ct = ClaimedTask(
        id="t1",
        name="some.task",
        args={},
        queue="default",
        priority=5,
        attempts=1,
        max_retries=3,
        timeout=None,
        retry=RetryPolicy(),
        lease_token="x",
        lease_expires_at=0.0,
        run_at=0.0,
        created_at=0.0,
    )
    worker.claimed(0.001)
    worker.tally.started(ct, 1.0)
    worker.tally.finished(ct, 0.01, "retry")
    await backend.metrics_add(worker.tally.unsent())  # what the worker's flush does
    cluster = exposed_names(cluster_metrics(stats, await backend.metrics_read()).decode())
    exposed = cluster | exposed_names(worker.render().decode())

    missing = board_names() - exposed
    assert not missing, f"the Grafana board queries metrics nothing exposes: {sorted(missing)}"
    from_api = {name for expr in board_exprs() for name in API_JOB.findall(expr)}
    assert from_api, "the board reads no attempt figures from the API job"
    assert not from_api - cluster, f"the board reads from the API what it does not serve: {sorted(from_api - cluster)}"


def test_prometheus_config_scrapes_the_api_and_the_workers() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["conveyor-api"]["metrics_path"] == "/metrics"
    assert jobs["conveyor-workers"]["static_configs"][0]["targets"]
