"""What observability costs on the hot path, and how fast ``/metrics`` answers.

    python bench/observability.py                    # SQLite temp files, 3 runs
    python bench/observability.py --url postgresql://localhost/test --runs 3

Throughput: the ``throughput`` measurement of ``conveyor.bench`` (20,000 no-op tasks
drained by 2 worker processes), run alternately with everything off (but the attempt
tally every worker keeps and adds to the engine once a second) and with everything
on: JSON logs at INFO, per-process Prometheus histograms served, and
notifications: a webhook subscribed to ``task.succeeded``, so every task records an
outbox event in its completion step and the workers deliver it, signed, to a local
receiver while they run (``--webhook-batch`` events per request, default 100; 1 sends
each event alone). Ratio = on / off per pair of runs; the target is >= 0.85.

``/metrics``: the API's scrape (``GET /metrics`` through the real ASGI app) with a
backlog of ``--backlog`` tasks stored (default 1,000,000); the median of 20 scrapes,
target < 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from conveyor.bench import BenchConfig, Scratch, _make_app, fill_backlog, measure_throughput

SECRET = "bench-secret-0123456789"


@contextlib.contextmanager
def receiver() -> Iterator[tuple[str, list[int]]]:
    """A webhook endpoint answering 204 at once; yields its URL and a request counter."""
    count = [0]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real receivers do

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            count[0] += 1
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", count
    finally:
        server.shutdown()


@contextlib.contextmanager
def observed(config: Path, deliver: bool) -> Iterator[None]:
    """Worker processes started inside see everything on (delivering, or only recording)."""
    keys = ("CONVEYOR_CONFIG", "CONVEYOR_BENCH_OBSERVE", "CONVEYOR_BENCH_NOTIFY")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(CONVEYOR_CONFIG=str(config), CONVEYOR_BENCH_OBSERVE="1", CONVEYOR_BENCH_NOTIFY=str(int(deliver)))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


async def subscribe(url: str, events: frozenset[str]) -> None:
    app = _make_app(url)
    try:
        await (await app.backend()).outbox_subscribe(events)
    finally:
        await app.aclose()


async def unsubscribe(url: str) -> None:
    """Leave the store as an "off" run expects it (PostgreSQL and Redis places share one)."""
    app = _make_app(url)
    try:
        await (await app.backend()).outbox_subscribe(frozenset())
    finally:
        await app.aclose()


async def throughput_pairs(
    url: str | None, runs: int, n: int, batch: int, rounds: int, deliver: bool
) -> list[tuple[float, float]]:
    cfg = BenchConfig(throughput_n=n)
    pairs = []
    with receiver() as (hook, count), tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "conveyor.yaml"
        notifications = {
            "webhooks": [
                {
                    "name": "bench",
                    "url": hook,
                    "secret": SECRET,
                    "events": ["task.succeeded"],
                    "batch": batch,
                }
            ],
            "poll_interval": 0.2,
            "batch": rounds,
        }
        config.write_text(yaml.safe_dump({"notifications": notifications}))
        scratch = Scratch(url)
        try:
            for run in range(runs):
                off = await measure_throughput(cfg, scratch.place(f"off{run}"), 2)
                before = count[0]
                place = scratch.place(f"on{run}")
                if not deliver:  # nobody delivers, so subscribe here: the events are recorded
                    await subscribe(place.url, frozenset({"task.succeeded"}))
                with observed(config, deliver):
                    on = await measure_throughput(cfg, place, 2)
                await unsubscribe(place.url)
                print(f"run {run + 1}: off {off:,.0f}/s  on {on:,.0f}/s  ratio {on / off:.2f}  "
                      f"(webhooks received during the run: {count[0] - before:,})", flush=True)  # fmt: skip
                pairs.append((off, on))
        finally:
            scratch.cleanup()
    return pairs


async def scrape_times(url: str | None, backlog: int) -> list[float]:
    import httpx

    from conveyor.api.app import create_app

    scratch = Scratch(url)
    try:
        place = scratch.place("metrics")
        t0 = time.perf_counter()
        await fill_backlog(BenchConfig(), place, backlog)
        print(f"stored {backlog:,} tasks in {time.perf_counter() - t0:.0f} s", flush=True)
        api = create_app(place.url)
        times = []
        transport = httpx.ASGITransport(app=api)
        async with api.router.lifespan_context(api), httpx.AsyncClient(transport=transport, base_url="http://x") as c:
            for _ in range(21):
                started = time.perf_counter()
                response = await c.get("/metrics")
                times.append(time.perf_counter() - started)
                response.raise_for_status()
        return times[1:]  # the first opens connections
    finally:
        scratch.cleanup()  # a server engine's schema or key prefix of its own goes with it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="engine URL (default: temporary SQLite files)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--n", type=int, default=20_000, help="tasks per throughput run")
    parser.add_argument("--backlog", type=int, default=1_000_000, help="tasks stored for the /metrics timing")
    parser.add_argument("--webhook-batch", type=int, default=100, help="events per webhook request (1: one each)")
    parser.add_argument("--round", type=int, default=100, help="events a deliverer claims per round")
    parser.add_argument("--no-deliver", action="store_true", help="record the events but deliver none during the run")
    parser.add_argument("--skip-metrics", action="store_true", help="only the throughput pairs")
    parser.add_argument("--only-metrics", action="store_true", help="only the /metrics timing")
    args = parser.parse_args()
    if not args.only_metrics:
        pairs = asyncio.run(
            throughput_pairs(args.url, args.runs, args.n, args.webhook_batch, args.round, not args.no_deliver)
        )
        offs, ons = [p[0] for p in pairs], [p[1] for p in pairs]
        ratio = statistics.median(on / off for off, on in pairs)
        print(f"throughput median: off {statistics.median(offs):,.0f}/s, on {statistics.median(ons):,.0f}/s; "
              f"median ratio {ratio:.2f} (target >= 0.85)")  # fmt: skip
    if not args.skip_metrics:
        times = asyncio.run(scrape_times(args.url, args.backlog))
        print(f"/metrics with {args.backlog:,} tasks: median {statistics.median(times) * 1000:.1f} ms, "
              f"max {max(times) * 1000:.1f} ms over {len(times)} scrapes (target < 100 ms)")  # fmt: skip


if __name__ == "__main__":
    main()
