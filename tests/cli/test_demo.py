"""``conveyor demo`` end to end: real worker processes on a temporary SQLite file."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.cli.helpers import COMMAND, clean_env

# The demo's workload is fixed: 20 flaky tasks recover, 13 end in the DLQ, 3 are cancelled.
EXPECTED_STATES = {"succeeded": 276, "failed": 13, "cancelled": 3}  # incl. the 6-node workflow
EXPECTED_DLQ = {"permanent_error": 4, "retries_exhausted": 6, "timeout": 3}


def run_demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*COMMAND, "demo", *args],
        cwd=tmp_path,
        env=clean_env(COLUMNS="120"),
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return proc


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_demo_runs_the_workload_and_prints_a_summary(tmp_path: Path) -> None:
    out = run_demo(tmp_path).stdout
    for state, count in EXPECTED_STATES.items():
        assert re.search(rf"{state}\W+{count}\b", out), out
    for band in ("high", "medium", "low"):
        assert f"{band} band" in out
    assert "dead-letter queue: 13 tasks" in out
    assert "tasks/s" in out and "p95" in out
    assert re.search(r"exit codes\s+0, 0", out)
    assert list(tmp_path.iterdir()) == []  # nothing left behind in the working directory


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_demo_json_summary_counts_every_outcome(tmp_path: Path) -> None:
    summary = json.loads(run_demo(tmp_path, "--json").stdout)
    assert summary["states"] == EXPECTED_STATES
    assert {reason: d["count"] for reason, d in summary["dlq"].items()} == EXPECTED_DLQ
    assert summary["retries"] >= 10 * 1 + 10 * 2 + 6 * 2 + 3 * 1  # flaky, exhausted, timed out
    assert summary["worker_exit_codes"] == [0, 0]
    workflow = summary["workflow"]
    assert workflow["state"] == "succeeded" and len(workflow["nodes"]) == 6
    assert workflow["result"] == {"regions": 4, "total": 545}  # the fan-in read its parents' results
    assert summary["bands"]["high"]["wait_p50"] <= summary["bands"]["low"]["wait_p50"]
