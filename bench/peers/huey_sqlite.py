"""The embedded peer: Huey's ``SqliteHuey`` under Conveyor's bench workload.

Runs in a throwaway virtualenv that has Huey and not Conveyor (see ``run_huey.sh``);
it imports only Huey and the standard library. Same machine, same workload as
``conveyor bench``:

* ``submit_one``: enqueues per second, one at a time, from one process;
* ``throughput``: no-op tasks per second with 2 worker *processes* sharing one
  SQLite file (``-k process -w 2``), from the first task's start to the last
  task's end (stamped by marker tasks at both ends of the queue), so consumer
  start-up is not counted;
* ``latency``: enqueue-to-start p50/p95/p99 with idle workers, one task at a time at
  a modest rate; each task returns ``time.time() - sent`` as its result. Huey
  workers poll an idle SQLite queue, so latency depends on the polling settings:
  it is measured with Huey's defaults (``-d 0.1 -b 1.15 -m 10``) and with tight
  polling (``-d 0.001 -b 1.15 -m 0.01``).

``--conveyor-json A.json ... --huey-json B.json ...`` prints Conveyor/Huey ratios
from reports of ``bench/run.py --json`` and of this script (``run_huey.sh``
interleaves single runs of both, so a load spike on a shared machine hits both).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from typing import Any

from huey import SqliteHuey
from huey.consumer import Consumer

POLLING = {"default": (0.1, 1.15, 10.0), "tight": (0.001, 1.15, 0.01)}


def make_huey(path: str) -> tuple[SqliteHuey, dict[str, Any]]:
    """A ``SqliteHuey`` on ``path`` (WAL, Huey's defaults) and its three tasks."""
    huey = SqliteHuey("bench", filename=path)

    def noop() -> None:
        return None

    def stamp() -> float:
        return time.time()

    def since(sent: float) -> float:
        return time.time() - sent

    tasks = {f.__name__: huey.task(name=f.__name__)(f) for f in (noop, stamp, since)}
    return huey, tasks


def _consume(path: str, workers: int, polling: str) -> None:
    huey, _ = make_huey(path)
    delay, backoff, max_delay = POLLING[polling]
    consumer = Consumer(
        huey,
        workers=workers,
        worker_type="process",
        periodic=False,
        initial_delay=delay,
        backoff=backoff,
        max_delay=max_delay,
    )
    consumer.run()


class Consumers:
    """``huey_consumer`` in a child process (forked: Huey's process workers need fork)."""

    def __init__(self, path: str, workers: int, polling: str = "default") -> None:
        ctx = multiprocessing.get_context("fork")
        self.proc = ctx.Process(target=_consume, args=(path, workers, polling), daemon=False)

    def __enter__(self) -> Consumers:
        self.proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.pid is not None and self.proc.is_alive():
            os.kill(self.proc.pid, signal.SIGINT)  # Huey's graceful stop
            self.proc.join(15)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]


def measure_submit(path: str, n: int) -> float:
    huey, tasks = make_huey(path)
    tasks["noop"]()  # create the connection outside the clock
    started = time.perf_counter()
    for _ in range(n):
        tasks["noop"]()
    rate = n / (time.perf_counter() - started)
    huey.storage.flush_queue()
    return rate


def measure_throughput(path: str, n: int, workers: int) -> float:
    huey, tasks = make_huey(path)
    first = tasks["stamp"]()
    for _ in range(n - 2):
        tasks["noop"]()
    last = tasks["stamp"]()
    with Consumers(path, workers):
        t_last = last.get(blocking=True, timeout=60 + n / 100)
        t_first = first.get(blocking=True, timeout=30)
        deadline = time.monotonic() + 30
        while huey.pending_count() and time.monotonic() < deadline:
            time.sleep(0.01)
    if t_first is None or t_last is None or huey.pending_count():
        raise RuntimeError("huey did not drain the queue")
    return n / (t_last - t_first)


def measure_latency(path: str, n: int, rate: float, workers: int, polling: str) -> list[float]:
    _huey, tasks = make_huey(path)
    with Consumers(path, workers, polling):
        time.sleep(1.0)  # workers find nothing and start polling
        results = []
        due = time.monotonic()
        for _ in range(n):
            results.append(tasks["since"](time.time()))
            due += random.uniform(0.5, 1.5) / rate
            time.sleep(max(0.0, due - time.monotonic()))
        waits = [r.get(blocking=True, timeout=60) for r in results]
    return [w * 1000 for w in waits]


def run(args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        figures.setdefault(key, []).append(value)

    folder = tempfile.mkdtemp(prefix="huey-bench-")
    try:
        for run_no in range(1, args.runs + 1):
            print(f"huey: run {run_no}/{args.runs}", file=sys.stderr)
            add("submit_one", measure_submit(os.path.join(folder, f"submit-{run_no}.db"), args.submit_n))
            for workers in sorted({1, args.workers}):
                db = os.path.join(folder, f"throughput-{workers}-{run_no}.db")
                add(f"throughput_{workers}", measure_throughput(db, args.n, workers))
            for polling in POLLING:
                db = os.path.join(folder, f"latency-{polling}-{run_no}.db")
                ms = measure_latency(db, args.latency_n, args.latency_rate, args.workers, polling)
                for pct in (50, 95, 99):
                    add(f"latency_p{pct}_{polling}_polling", percentile(ms, pct))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "meta": {
            "peer": "huey SqliteHuey",
            "huey": __import__("huey").__version__,
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "config": vars(args) | {"polling": POLLING},
        },
        "figures": {k: {"median": statistics.median(v), "runs": v} for k, v in figures.items()},
    }


# figure in Conveyor's JSON -> figure here, and whether higher is better
COMPARED = {
    "submit_one": ("submit_one", True),
    "submit_one_sync": ("submit_one", True),  # enqueueing is sync
    "throughput_1": ("throughput_1", True),
    "throughput_2": ("throughput_2", True),
    "latency_p50": ("latency_p50_tight_polling", False),
    "latency_p99": ("latency_p99_tight_polling", False),
}


def _runs(paths: list[str]) -> dict[str, list[float]]:
    """Every run of every figure across JSON reports (each may hold one run or several)."""
    runs: dict[str, list[float]] = {}
    for path in paths:
        with open(path) as f:
            for key, fig in json.load(f)["figures"].items():
                runs.setdefault(key, []).extend(fig["runs"])
    return runs


def compare(conveyor_jsons: list[str], huey_jsons: list[str]) -> None:
    """Print each shared figure's median and the ratio Conveyor/Huey (latency: Huey/Conveyor,
    so above 1 always means Conveyor is better). Reports may be interleaved single runs."""
    ours, theirs = _runs(conveyor_jsons), _runs(huey_jsons)
    print(f"{'figure':<14}{'conveyor':>12}{'huey':>12}{'ratio':>8}  runs (conveyor | huey)")
    for key, (peer_key, higher) in COMPARED.items():
        if key not in ours or peer_key not in theirs:
            continue
        a, b = statistics.median(ours[key]), statistics.median(theirs[peer_key])
        ratio = a / b if higher else b / a
        detail = " ".join(f"{r:,.1f}" for r in ours[key]) + " | " + " ".join(f"{r:,.1f}" for r in theirs[peer_key])
        print(f"{key:<14}{a:>12,.1f}{b:>12,.1f}{ratio:>7.2f}x  {detail}")
    print("ratio: conveyor/huey for rates, huey/conveyor for latencies (tight Huey polling); > 1: Conveyor better")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--n", type=int, default=20_000, help="tasks per throughput run")
    parser.add_argument("--submit-n", type=int, default=5_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--latency-n", type=int, default=300)
    parser.add_argument("--latency-rate", type=float, default=50.0)
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--conveyor-json", nargs="+", help="compare: Conveyor's bench/run.py --json reports")
    parser.add_argument("--huey-json", nargs="+", help="compare: this script's reports")
    args = parser.parse_args()
    if args.conveyor_json or args.huey_json:
        compare(args.conveyor_json or [], args.huey_json or [])
        return
    if args.quick:
        args.n, args.submit_n, args.latency_n, args.latency_rate = 1_000, 200, 30, 100.0
    del args.conveyor_json, args.huey_json, args.quick
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
