"""The benchmark library runs end to end in --quick mode and reports positive figures.

No timing thresholds here: CI machines are noisy. `make bench` checks the targets.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conveyor.bench import MEASUREMENTS, BenchConfig, new_figures, percentile, run_bench, run_cli


def test_quick_bench_on_a_sqlite_file_reports_every_figure_positive(tmp_path: Path) -> None:
    cfg = BenchConfig.quick(runs=1, backlog_big=5_000, memory_n=2_000)
    report = run_bench(f"sqlite:///{tmp_path / 'bench.db'}", cfg)
    figures = {f.key: f for f in report.measured()}
    expected = {
        "submit_one",
        "submit_one_sync",
        "submit_concurrent",
        "submit_batch",
        "submit_map",
        "throughput_1",
        "throughput_2",
        "latency_p50",
        "latency_p95",
        "latency_p99",
        "claim_small",
        "claim_big",
        "claim_ratio",
        "rss_warm",
        "rss_end",
        "rss_growth",
    }
    assert set(figures) == expected
    medians = {key: fig.median for key, fig in figures.items() if fig.median is not None}
    assert set(medians) == expected
    for key in expected - {"rss_growth"}:  # RSS may shrink: growth can be negative
        assert medians[key] > 0, key
    assert medians["latency_p50"] <= medians["latency_p99"]
    assert list(tmp_path.iterdir()) == []  # the scratch files are gone


def test_bench_cli_prints_json_figures(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = run_cli(f"sqlite:///{tmp_path / 'b.db'}", json_out=True, runs=1, quick=True, only=["enqueue"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["meta"]["engine"] == "sqlite"
    assert out["figures"]["submit_one"]["median"] > 0
    assert out["figures"]["submit_one_sync"]["median"] > 0
    assert out["figures"]["submit_batch"]["runs"]


def test_bench_cli_refuses_unknown_measurements() -> None:
    assert run_cli(None, only=["nope"], quick=True) == 2
    assert set(MEASUREMENTS) == {"enqueue", "throughput", "latency", "claim", "memory"}


def test_bench_on_memory_engine_runs_only_the_in_process_measurement() -> None:
    report = run_bench("memory://bench-smoke", BenchConfig.quick(runs=1))
    assert {f.key for f in report.measured()} == {
        "submit_one",
        "submit_one_sync",
        "submit_concurrent",
        "submit_batch",
        "submit_map",
    }
    assert report.notes


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0


def test_each_engine_is_checked_against_its_own_targets() -> None:
    sqlite, pg, redis = (new_figures(2, engine) for engine in ("sqlite", "postgresql", "redis"))
    assert (sqlite["submit_one"].target, pg["submit_one"].target, redis["submit_one"].target) == (5_000, 3_000, 7_000)
    assert (pg["throughput_2"].target, redis["throughput_2"].target) == (5_400, 5_000)
    assert (pg["latency_p99"].target, redis["latency_p50"].target) == (15, 2)
    assert redis["submit_batch"].target is None and pg["submit_batch"].target == 50_000
    assert new_figures(2, "postgres")["submit_one"].target == 3_000


def test_a_server_bench_works_in_a_store_of_its_own_and_removes_it() -> None:
    """The schema or key prefix the URL names is never written to: a run on someone's
    database leaves nothing behind (it used to leave every bench task in PostgreSQL)."""
    import psycopg
    import redis

    from tests.services import postgres_url, redis_url

    pg_template, redis_template = postgres_url(), redis_url()
    if pg_template is None or redis_template is None:
        pytest.fail("the bench cleanup test needs the PostgreSQL and Redis servers")
    pg = pg_template.split("?", 1)[0] + "?schema=bench_target"
    with psycopg.connect(pg.split("?", 1)[0], autocommit=True) as conn:
        schemas = "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'bench_target%'"
        assert run_bench(pg, BenchConfig.quick(runs=1, only=frozenset({"enqueue"}))).measured()
        assert conn.execute(schemas).fetchall() == []
    rd = redis_template.split("?", 1)[0] + "?prefix=bench_target"
    assert run_bench(rd, BenchConfig.quick(runs=1, only=frozenset({"enqueue"}))).measured()
    assert list(redis.Redis.from_url(rd.split("?", 1)[0]).scan_iter(match="{bench_target*")) == []
