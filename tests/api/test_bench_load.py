"""``bench/api_load.py`` keeps working: a short run with each client reports sane figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "api_load.py"


@pytest.mark.parametrize(("client", "mode"), [("raw", "both"), ("httpx", "single")])
def test_api_load_smoke(client: str, mode: str) -> None:
    args = ["--client", client, "--mode", mode, "--seconds", "1", "--runs", "1", "--batch", "5"]
    r = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--connections", "4", "--procs", "2", "--json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout)
    for name in ["single", "batch"] if mode == "both" else [mode]:
        median = report[name]["median"]
        assert median["requests_per_s"] > 0 and median["p99_ms"] >= median["p50_ms"] > 0
        assert median["server_cpu_us"] > 0
    if mode == "both":
        batch = report["batch"]["median"]
        assert batch["tasks_per_s"] == pytest.approx(5 * batch["requests_per_s"])
