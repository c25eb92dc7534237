"""Submits per second through one ``conveyor api`` process, single and batched.

Starts ``conveyor api`` on a fresh SQLite file (rate limit off, auth on), then drives
it from separate load-generator processes (httpx async, ``--connections`` concurrent
requests each) and reports throughput and p50/p99 latency per mode, the median of
``--runs`` runs::

    .venv/bin/python bench/api_load.py                 # single and batch, 3 runs each
    .venv/bin/python bench/api_load.py --mode single --seconds 5 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_api(db: Path, port: int, log: Path, access_log: bool) -> subprocess.Popen[bytes]:
    import hashlib

    tokens = [{"name": "bench", "role": "submit", "sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")} | {
        "CONVEYOR_URL": f"sqlite:///{db}",
        "CONVEYOR_API__TOKENS": json.dumps(tokens),
        "CONVEYOR_API__RATE_LIMIT": "0",
        "CONVEYOR_API__ACCESS_LOG": "true" if access_log else "false",
    }
    out = log.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "api", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=out,
        stderr=out,
        cwd=db.parent,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"conveyor api did not start; see {log}")


async def _drive(base: str, mode: str, batch: int, connections: int, seconds: float) -> tuple[int, list[float]]:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    latencies: list[float] = []
    done = 0
    stop = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=30) as client:

        async def one_loop(worker: int) -> None:
            nonlocal done
            i = 0
            while time.perf_counter() < stop:
                i += 1
                if mode == "single":
                    path, body, n = "/tasks", {"name": "bench.noop", "args": {"w": worker, "i": i}}, 1
                else:
                    tasks = [{"name": "bench.noop", "args": {"w": worker, "i": i, "j": j}} for j in range(batch)]
                    path, body, n = "/tasks/batch", {"tasks": tasks}, batch
                t0 = time.perf_counter()
                r = await client.post(path, json=body)
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 201:
                    raise RuntimeError(f"{path}: HTTP {r.status_code} {r.text[:200]}")
                done += n

        await asyncio.gather(*(one_loop(w) for w in range(connections)))
    return done, latencies


def _generator(args: tuple[str, str, int, int, float], queue: Any) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    queue.put(asyncio.run(_drive(*args)))


def run_once(base: str, mode: str, batch: int, connections: int, procs: int, seconds: float) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    per = max(1, connections // procs)
    workers = [ctx.Process(target=_generator, args=((base, mode, batch, per, seconds), queue)) for _ in range(procs)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    results = [queue.get() for _ in workers]
    elapsed = time.perf_counter() - started - 0.0
    for w in workers:
        w.join()
    tasks = sum(r[0] for r in results)
    lat = sorted(x for r in results for x in r[1])
    # Throughput over the measured window (the generators' own clocks), not process start-up.
    return {
        "tasks_per_s": tasks / seconds,
        "requests_per_s": len(lat) / seconds,
        "p50_ms": lat[len(lat) // 2] * 1000,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000,
        "wall_s": elapsed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["single", "batch", "both"], default="both")
    parser.add_argument("--batch", type=int, default=100, help="tasks per batch request")
    parser.add_argument("--connections", type=int, default=32, help="concurrent requests in flight")
    parser.add_argument("--procs", type=int, default=2, help="load-generator processes")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-access-log", action="store_true", help="turn the JSON access log off")
    parser.add_argument("--json", action="store_true")
    ns = parser.parse_args()
    modes = ["single", "batch"] if ns.mode == "both" else [ns.mode]
    report: dict[str, Any] = {"connections": ns.connections, "procs": ns.procs, "seconds": ns.seconds}
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = start_api(Path(tmp) / "bench.db", port, Path(tmp) / "api.log", not ns.no_access_log)
        try:
            base = f"http://127.0.0.1:{port}"
            run_once(base, "single", ns.batch, ns.connections, ns.procs, 1.0)  # warm-up
            for mode in modes:
                runs = [run_once(base, mode, ns.batch, ns.connections, ns.procs, ns.seconds) for _ in range(ns.runs)]
                median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                report[mode] = {"runs": runs, "median": median}
                if not ns.json:
                    for i, r in enumerate(runs, 1):
                        print(
                            f"{mode:6} run {i}: {r['tasks_per_s']:8.0f} tasks/s  {r['requests_per_s']:7.0f} req/s  "
                            f"p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms"
                        )
                    print(
                        f"{mode:6} median: {median['tasks_per_s']:8.0f} tasks/s  p50 {median['p50_ms']:.1f} ms  "
                        f"p99 {median['p99_ms']:.1f} ms"
                    )
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    if ns.json:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
