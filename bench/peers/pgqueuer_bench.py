"""The PostgreSQL peer: PgQueuer under Conveyor's bench workload, on the same database.

Runs in a throwaway virtualenv that has PgQueuer and not Conveyor (see
``run_pgqueuer.sh``); it imports only PgQueuer, its drivers and the standard library.
Its tables live in their own schema (``PGQUEUER_SCHEMA``, default ``pgqbench``),
dropped at the end. Same workload as ``bench/run.py --url postgresql://...``:

* ``submit_one``: enqueues per second, one at a time, from one process;
* ``submit_batch``: enqueues per second in batches of 1,000;
* ``throughput_1``, ``throughput_2``: no-op jobs per second with 1 or 2 worker
  *processes* (``QueueManager.run``, ``batch_size=10``, drain mode) emptying a
  pre-filled queue, from the first job's start to the last job's end;
* ``latency``: enqueue-to-start p50/p95/p99 with idle workers, one job at a time at
  about 50/s (jittered); each job carries its send time.

``--conveyor-json A.json ... --peer-json B.json ...`` prints Conveyor/PgQueuer ratios
from reports of ``bench/run.py --json`` and of this script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import random
import statistics
import sys
import time
from datetime import timedelta
from typing import Any

SCHEMA = os.environ.setdefault("PGQUEUER_SCHEMA", "pgqbench")

import asyncpg  # noqa: E402  (PgQueuer reads PGQUEUER_SCHEMA when it builds its settings)
from pgqueuer import Job, Queries, QueueManager  # noqa: E402
from pgqueuer.domain.types import QueueExecutionMode  # noqa: E402


async def _connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn)


async def _reset(dsn: str) -> None:
    """A fresh PgQueuer schema for each measurement."""
    conn = await _connect(dsn)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        await Queries.from_asyncpg_connection(conn).install()
    finally:
        await conn.close()


async def _drop(dsn: str) -> None:
    conn = await _connect(dsn)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    finally:
        await conn.close()


# --- workers (child processes) -----------------------------------------------------------


async def _work(dsn: str, mode: str, results: Any, stop: Any) -> None:
    conn = await _connect(dsn)
    qm = QueueManager(Queries.from_asyncpg_connection(conn))
    times: list[float] = []
    waits: list[float] = []

    @qm.entrypoint("noop")
    async def noop(job: Job) -> None:
        times.append(time.time())

    @qm.entrypoint("since")
    async def since(job: Job) -> None:
        waits.append(time.time() - float(job.payload or b"0"))

    async def watch() -> None:
        await asyncio.to_thread(stop.wait)
        qm.shutdown.set()

    watcher = asyncio.create_task(watch())
    results.put("ready")
    run_mode = QueueExecutionMode.drain if mode == "drain" else QueueExecutionMode.continuous
    batch = int(os.environ.get("PGQUEUER_BATCH_SIZE", "10"))  # run_pgqueuer.sh BATCH=N
    await qm.run(batch_size=batch, mode=run_mode, dequeue_timeout=timedelta(seconds=30))
    results.put({"first": min(times, default=None), "last": max(times, default=None), "waits": waits})
    await conn.close()
    await watcher


def _worker_main(dsn: str, mode: str, results: Any, stop: Any) -> None:
    asyncio.run(_work(dsn, mode, results, stop))


class Workers:
    """``count`` worker processes (spawned: nothing inherited but the arguments)."""

    def __init__(self, dsn: str, count: int, mode: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.results = ctx.Queue()
        self.stop_event = ctx.Event()
        self.procs = [
            ctx.Process(target=_worker_main, args=(dsn, mode, self.results, self.stop_event)) for _ in range(count)
        ]
        self._reports: list[dict[str, Any]] = []
        self._ready = 0

    def __enter__(self) -> Workers:
        for p in self.procs:
            p.start()
        return self

    def _take(self, timeout: float) -> None:
        item = self.results.get(timeout=timeout)
        if item == "ready":
            self._ready += 1
        else:
            self._reports.append(item)

    def wait_ready(self, timeout: float = 60.0) -> None:
        while self._ready < len(self.procs):
            self._take(timeout)

    def stop(self) -> None:
        self.stop_event.set()

    def join(self, timeout: float) -> list[dict[str, Any]]:
        """Every worker's report (drain-mode workers send it when the queue is empty)."""
        while len(self._reports) < len(self.procs):
            self._take(timeout)
        return self._reports

    def __exit__(self, *exc: object) -> None:
        self.stop()
        for p in self.procs:
            p.join(15)
            if p.is_alive():
                p.kill()


# --- measurements ------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]


async def measure_submit(dsn: str, n: int, batch: int) -> float:
    await _reset(dsn)
    conn = await _connect(dsn)
    q = Queries.from_asyncpg_connection(conn)
    await q.enqueue("noop", None)
    started = time.perf_counter()
    if batch == 1:
        for _ in range(n):
            await q.enqueue("noop", None)
    else:
        for _ in range(n // batch):
            await q.enqueue(["noop"] * batch, [None] * batch, [0] * batch)
    rate = n / (time.perf_counter() - started)
    await conn.close()
    return rate


async def _fill(dsn: str, n: int) -> None:
    conn = await _connect(dsn)
    q = Queries.from_asyncpg_connection(conn)
    for start in range(0, n, 1000):
        size = min(1000, n - start)
        await q.enqueue(["noop"] * size, [None] * size, [0] * size)
    await conn.close()


def measure_throughput(dsn: str, n: int, workers: int) -> float:
    asyncio.run(_reset(dsn))
    asyncio.run(_fill(dsn, n))
    with Workers(dsn, workers, "drain") as procs:
        reports = procs.join(120 + n / 100)
    firsts = [r["first"] for r in reports if r["first"] is not None]
    lasts = [r["last"] for r in reports if r["last"] is not None]
    if len(reports) != workers or not firsts:
        raise RuntimeError("pgqueuer workers did not report")
    return n / (max(lasts) - min(firsts))


def measure_latency(dsn: str, n: int, rate: float, workers: int) -> list[float]:
    asyncio.run(_reset(dsn))

    async def send() -> None:
        conn = await _connect(dsn)
        q = Queries.from_asyncpg_connection(conn)
        due = time.monotonic()
        for _ in range(n):
            await q.enqueue("since", str(time.time()).encode())
            due += random.uniform(0.5, 1.5) / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        await asyncio.sleep(2.0)  # let the last ones run
        await conn.close()

    with Workers(dsn, workers, "continuous") as procs:
        procs.wait_ready()
        time.sleep(1.0)  # the workers find nothing and wait
        asyncio.run(send())
        procs.stop()
        reports = procs.join(30)
    waits = [w * 1000 for r in reports for w in r["waits"]]
    if len(waits) < n:
        raise RuntimeError(f"only {len(waits)} of {n} latency jobs ran")
    return waits


def run(args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        figures.setdefault(key, []).append(value)

    try:
        for run_no in range(1, args.runs + 1):
            print(f"pgqueuer: run {run_no}/{args.runs}", file=sys.stderr)
            add("submit_one", asyncio.run(measure_submit(args.dsn, args.submit_n, 1)))
            add("submit_batch", asyncio.run(measure_submit(args.dsn, args.batch_n, 1000)))
            for workers in sorted({1, args.workers}):
                add(f"throughput_{workers}", measure_throughput(args.dsn, args.n, workers))
            ms = measure_latency(args.dsn, args.latency_n, args.latency_rate, args.workers)
            for pct in (50, 95, 99):
                add(f"latency_p{pct}", percentile(ms, pct))
    finally:
        asyncio.run(_drop(args.dsn))
    import pgqueuer

    return {
        "meta": {
            "peer": "pgqueuer (asyncpg driver)",
            "pgqueuer": pgqueuer.__version__,
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "config": {k: v for k, v in vars(args).items() if k != "dsn"},
        },
        "figures": {k: {"median": statistics.median(v), "runs": v} for k, v in figures.items()},
    }


# figure in Conveyor's JSON -> figure here, and whether higher is better
COMPARED = {
    "submit_one": ("submit_one", True),
    "submit_batch": ("submit_batch", True),
    "throughput_1": ("throughput_1", True),
    "throughput_2": ("throughput_2", True),
    "latency_p50": ("latency_p50", False),
    "latency_p99": ("latency_p99", False),
}


def _runs(paths: list[str]) -> dict[str, list[float]]:
    runs: dict[str, list[float]] = {}
    for path in paths:
        with open(path) as f:
            for key, fig in json.load(f)["figures"].items():
                runs.setdefault(key, []).extend(fig["runs"])
    return runs


def compare(conveyor_jsons: list[str], peer_jsons: list[str]) -> None:
    """Each shared figure's median and the ratio (above 1: Conveyor is better)."""
    ours, theirs = _runs(conveyor_jsons), _runs(peer_jsons)
    print(f"{'figure':<14}{'conveyor':>12}{'pgqueuer':>12}{'ratio':>8}  runs (conveyor | pgqueuer)")
    for key, (peer_key, higher) in COMPARED.items():
        if key not in ours or peer_key not in theirs:
            continue
        a, b = statistics.median(ours[key]), statistics.median(theirs[peer_key])
        ratio = a / b if higher else b / a
        detail = " ".join(f"{r:,.1f}" for r in ours[key]) + " | " + " ".join(f"{r:,.1f}" for r in theirs[peer_key])
        print(f"{key:<14}{a:>12,.1f}{b:>12,.1f}{ratio:>7.2f}x  {detail}")
    print("ratio: conveyor/pgqueuer for rates, pgqueuer/conveyor for latencies; > 1: Conveyor better")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default="postgresql://127.0.0.1:5432/test")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--n", type=int, default=20_000, help="jobs per throughput run")
    parser.add_argument("--submit-n", type=int, default=5_000)
    parser.add_argument("--batch-n", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--latency-n", type=int, default=300)
    parser.add_argument("--latency-rate", type=float, default=50.0)
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--conveyor-json", nargs="+", help="compare: Conveyor's bench/run.py --json reports")
    parser.add_argument("--peer-json", nargs="+", help="compare: this script's reports")
    args = parser.parse_args()
    if args.conveyor_json or args.peer_json:
        compare(args.conveyor_json or [], args.peer_json or [])
        return
    if args.quick:
        args.n, args.submit_n, args.batch_n, args.latency_n, args.latency_rate = 2_000, 300, 10_000, 30, 100.0
    del args.conveyor_json, args.peer_json, args.quick
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
