"""How long each dashboard page takes with many tasks stored (default 1,000,000, SQLite).

Fills a SQLite file once (kept and reused: filling a million tasks takes a minute or
two), then renders every page in-process through the real app, a few times each,
and prints the median, the status, and the largest::

    .venv/bin/python bench/ui_pages.py                          # 1,000,000 tasks in /tmp
    .venv/bin/python bench/ui_pages.py --tasks 100000 --db /tmp/ui-100k.db --json

``stats`` is cached for a second per process (``conveyor.ui.pages.StatsCache``), so
the first render of a page that shows counts pays for the engine's count and the
next ones within a second do not; ``--fresh`` clears the cache before each render.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import time
from pathlib import Path

import httpx

from conveyor import Conveyor
from conveyor.api import create_app
from conveyor.config import load_settings
from conveyor.models import TaskSpec

QUEUES = ["default", "emails", "billing", "reports"]


async def fill(url: str, count: int) -> None:
    app = Conveyor(url)
    try:
        have = (await app.stats_async()).counts
        missing = count - sum(have.values())
        for start in range(0, max(0, missing), 5000):
            specs = [
                TaskSpec(name=f"job.{i % 7}", queue=QUEUES[i % 4], args={"i": i}, labels=[f"l{i % 10}"], priority=i % 9)
                for i in range(start, min(missing, start + 5000))
            ]
            await app.enqueue_many_async(specs)
    finally:
        await app.aclose()


async def measure(url: str, runs: int, fresh: bool) -> dict[str, dict[str, float]]:
    api = create_app(load_settings(url=url, api={"tokens": [], "access_log": False, "rate_limit": 0}))
    results: dict[str, dict[str, float]] = {}
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            listing = (await client.get("/ui/tasks?limit=1")).text
            found = re.search(r"/ui/tasks/([0-9a-f-]{36})", listing)
            paths = ["/ui", "/ui/live/overview", "/ui/tasks", "/ui/tasks?state=pending&queue=emails&label=l5"]
            paths += [f"/ui/tasks/{found.group(1)}"] if found else []
            paths += ["/ui/workers", "/ui/queues", "/ui/dlq", "/ui/tasks?state=bogus"]
            for path in paths:
                times, status, size = [], 0, 0
                for _ in range(runs):
                    if fresh:
                        api.state.ui_stats = None
                    started = time.perf_counter()
                    response = await client.get(path)
                    times.append(time.perf_counter() - started)
                    status, size = response.status_code, len(response.content)
                median_ms = round(statistics.median(times) * 1000, 1)
                results[path] = {"median_ms": median_ms, "status": status, "bytes": size}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--db", default="/tmp/conveyor-ui-bench.db")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--fresh", action="store_true", help="no stats cache: every render counts")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    url = f"sqlite:///{Path(args.db).resolve()}"
    started = time.perf_counter()
    asyncio.run(fill(url, args.tasks))
    filled = time.perf_counter() - started
    results = asyncio.run(measure(url, args.runs, args.fresh))
    if args.json:
        print(json.dumps({"tasks": args.tasks, "fill_s": round(filled, 1), "pages": results}, indent=2))
        return
    print(f"{args.tasks} tasks in {args.db} (filled in {filled:.1f} s); median of {args.runs} renders")
    for path, r in results.items():
        print(f"  {path:55s} {r['status']:.0f}  {r['median_ms']:8.1f} ms  {r['bytes'] / 1024:6.1f} KiB")


if __name__ == "__main__":
    main()
