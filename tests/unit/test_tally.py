"""The attempt tally: what a worker counts, the deltas it ships, and how totals render."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conveyor import Conveyor
from conveyor.backends.base import ClaimParams, Outcome, TaskFilter
from conveyor.metrics import TotalsCollector, WorkerMetrics, cluster_metrics
from conveyor.models import ClaimedTask, TaskError
from conveyor.retry import RetryPolicy
from conveyor.states import FailureReason
from conveyor.tally import DURATION_BUCKETS, Tally, metric_key


def claimed(name: str = "mail.send", queue: str = "emails", run_at: float = 100.0) -> ClaimedTask:
    return ClaimedTask(
        id="t1",
        name=name,
        args={},
        queue=queue,
        priority=5,
        attempts=1,
        max_retries=3,
        timeout=None,
        retry=RetryPolicy(),
        lease_token="x",
        lease_expires_at=0.0,
        run_at=run_at,
        created_at=0.0,
    )


def render(totals: dict[str, float]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in TotalsCollector(totals).collect():
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_deltas_are_what_grew_since_the_last_flush() -> None:
    tally, ct = Tally(), claimed()
    tally.started(ct, 100.004)
    tally.finished(ct, 0.003, "complete")
    first = tally.unsent()
    assert first[metric_key("duration", ("emails", "mail.send"), "le=0.005")] == 1
    assert first[metric_key("duration", ("emails", "mail.send"), "sum")] == pytest.approx(0.003)
    assert first[metric_key("attempts", ("emails", "mail.send"), "succeeded")] == 1
    assert first[metric_key("wait", ("emails",), "le=0.005")] == 1
    assert all(v != 0 for v in first.values())  # nothing unchanged is shipped
    tally.sent(first)
    assert tally.unsent() == {}

    tally.finished(ct, 7.0, "retry")
    second = tally.unsent()
    assert second == {
        metric_key("duration", ("emails", "mail.send"), "le=10.0"): 1,
        metric_key("duration", ("emails", "mail.send"), "sum"): pytest.approx(7.0),
        metric_key("attempts", ("emails", "mail.send"), "retrying"): 1,
        metric_key("retries", ("emails", "mail.send"), ""): 1,
    }


def test_a_failed_flush_ships_everything_next_time() -> None:
    tally, ct = Tally(), claimed()
    tally.finished(ct, 0.1, "complete")
    tally.unsent()  # the write failed: sent() is never called
    tally.finished(ct, 0.1, "complete")
    assert tally.unsent()[metric_key("attempts", ("emails", "mail.send"), "succeeded")] == 2


def test_float_sums_settle_exactly() -> None:
    """Many odd durations: after each flush nothing is left over from rounding."""
    tally, ct = Tally(), claimed()
    for i in range(200):
        tally.finished(ct, 0.1 + i / 7, "complete")
        tally.sent(tally.unsent())
        assert tally.unsent() == {}


def test_bucket_bounds_are_inclusive_and_overflow_goes_to_inf() -> None:
    tally, ct = Tally(), claimed()
    tally.finished(ct, 0.005, "complete")  # exactly a bound: that bucket (le means <=)
    tally.finished(ct, DURATION_BUCKETS[-1] + 1, "fail")
    page = render(tally.totals())
    labels = {"queue": "emails", "name": "mail.send"}

    def bucket(le: str) -> float:
        return page[("conveyor_task_duration_seconds_bucket", frozenset({**labels, "le": le}.items()))]

    assert bucket("0.0025") == 0 and bucket("0.005") == 1 and bucket("3600.0") == 1 and bucket("+Inf") == 2
    assert page[("conveyor_task_duration_seconds_count", frozenset(labels.items()))] == 2
    assert page[("conveyor_attempts_total", frozenset({**labels, "state": "failed"}.items()))] == 1


def test_totals_from_many_workers_render_as_their_sum() -> None:
    a, b = Tally(), Tally()
    a.finished(claimed(), 0.002, "complete")
    b.finished(claimed(), 0.2, "complete")
    b.finished(claimed(name="other"), 0.2, "retry")
    engine: dict[str, float] = {}
    for tally in (a, b):
        for k, v in tally.unsent().items():
            engine[k] = engine.get(k, 0.0) + v
    for odd in ('["from-a-newer-version"]', "not json", '["duration",["q"],"sum"]', '["attempts",["q","n"],""]'):
        engine[odd] = 1.0  # skipped, never an error
    engine[metric_key("duration", ("emails", "mail.send"), "le=bogus")] = 5.0
    page = render(engine)
    send = {"queue": "emails", "name": "mail.send"}
    assert page[("conveyor_task_duration_seconds_count", frozenset(send.items()))] == 2
    assert page[("conveyor_task_duration_seconds_bucket", frozenset({**send, "le": "0.0025"}.items()))] == 1
    assert page[("conveyor_task_duration_seconds_sum", frozenset(send.items()))] == pytest.approx(0.202)
    assert page[("conveyor_retries_total", frozenset({"queue": "emails", "name": "other"}.items()))] == 1


def test_keys_are_json_and_labels_may_hold_anything() -> None:
    key = metric_key("duration", ('q"1', "naïve.task"), "le=0.1")
    assert json.loads(key) == ["duration", ['q"1', "naïve.task"], "le=0.1"]


def test_the_worker_port_serves_its_tally_and_claim_latency() -> None:
    metrics = WorkerMetrics()
    metrics.claimed(0.002)
    metrics.tally.started(claimed(), 100.5)
    metrics.tally.finished(claimed(), 0.01, "complete")
    names = {s.name for f in text_string_to_metric_families(metrics.render().decode()) for s in f.samples}
    assert {
        "conveyor_claim_latency_seconds_count",
        "conveyor_task_duration_seconds_count",
        "conveyor_task_wait_seconds_bucket",
        "conveyor_attempts_total",
    } <= names


async def test_task_counters_never_go_down_through_purges_and_replays() -> None:
    app = Conveyor("memory://monotonic-counters")
    backend = await app.backend()
    for _ in range(3):
        await app.submit_async("doomed", {})
    claimed = (await backend.task_claim(ClaimParams("w1", 3, 30.0))).tasks
    error = TaskError(type="ValueError", message="boom", traceback="", retryable=False)
    fails = [
        Outcome(c.id, c.lease_token, "fail", error=error, failure_reason=FailureReason.PERMANENT_ERROR) for c in claimed
    ]
    await backend.task_finish_many(fails)

    async def page() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        text = cluster_metrics(await app.stats_async(), await backend.metrics_read()).decode()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }

    failed = ("conveyor_tasks_finished_total", frozenset({("state", "failed")}))
    submitted = ("conveyor_tasks_submitted_total", frozenset())
    before = await page()
    assert (before[submitted], before[failed]) == (3, 3)
    await app.dlq_replay_async(TaskFilter(ids=[claimed[0].id]))
    await app.dlq_purge_async(TaskFilter(ids=[claimed[1].id]))
    after = await page()
    assert (after[submitted], after[failed]) == (3, 3)
    assert after[("conveyor_tasks", frozenset({("state", "failed")}))] == 1
    await app.aclose()
