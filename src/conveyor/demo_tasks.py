"""The demo's task functions and its app, run by workers as ``conveyor.demo_tasks:app``.

Each function stands for a kind of real work the demo shows: quick jobs, a flaky
upstream that recovers, one that never does (dead-lettered), a payload rejected
for good, and a job that overruns its timeout. Retry backoff is short (0.1-0.5 s)
so the whole demo fits in seconds. The app's URL comes from ``CONVEYOR_URL``, which
``conveyor demo`` points at its temporary database.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

from conveyor import Conveyor, Permanent, RetryPolicy, current

FAST_RETRY = RetryPolicy(max_retries=3, base=0.1, factor=2.0, max=0.5)


async def work(ms: int) -> dict[str, Any]:
    """An ordinary job: takes ``ms`` milliseconds."""
    await asyncio.sleep(ms / 1000)
    return {"slept_ms": ms}


async def flaky(key: str, failures: int, ms: int = 50) -> str:
    """Fails its first ``failures`` attempts (a flaky upstream), then succeeds."""
    attempt = _count_attempt(key)
    await asyncio.sleep(ms / 1000)
    if attempt <= failures:
        raise ConnectionError(f"upstream unavailable (attempt {attempt}, recovers after {failures})")
    return f"ok on attempt {attempt}"


async def always_fails(order: int) -> None:
    """Retryable errors until the retries run out: ends in the DLQ (``retries_exhausted``)."""
    await asyncio.sleep(0.02)
    raise RuntimeError(f"payment gateway returned 502 for order {order}")


async def reject(record: int) -> None:
    """A payload no retry can fix: fails at once (``permanent_error``)."""
    raise Permanent(f"record {record} is missing required field 'email'")


async def slow(seconds: float) -> None:
    """Runs past its 0.5 s timeout on every attempt (``timeout``)."""
    await asyncio.sleep(seconds)


REGION_SALES = {"eu": 120, "us": 300, "apac": 80, "latam": 45}


async def fetch(region: str) -> int:
    """A workflow's fan-out step: one region's figure."""
    await asyncio.sleep(0.1)
    return REGION_SALES[region]


async def merge() -> dict[str, int]:
    """A workflow's fan-in step: sums its parents' results (by node key)."""
    parents = await current().parent_results_async()
    figures = {key: value for key, value in parents.items() if isinstance(value, int)}
    return {"regions": len(figures), "total": sum(figures.values())}


def _count_attempt(key: str) -> int:
    """Attempt number for ``key``, kept in a file: workers do not pass attempt counts to tasks.

    One attempt of a task runs at a time (its lease), so no two writers race on a key.
    """
    folder = Path(os.environ.get("CONVEYOR_DEMO_DIR") or tempfile.gettempdir())
    path = folder / f"conveyor-demo-{key}.count"
    attempt = (len(path.read_bytes()) if path.exists() else 0) + 1
    path.write_bytes(b"." * attempt)
    return attempt


def make_app(url: str | None = None) -> Conveyor:
    """The demo's app on ``url`` (default: ``CONVEYOR_URL`` or the configured URL)."""
    app = Conveyor(url)
    app.task(name="demo.work", retry=FAST_RETRY)(work)
    app.task(name="demo.flaky", retry=FAST_RETRY, max_retries=3)(flaky)
    app.task(name="demo.always_fails", retry=FAST_RETRY, max_retries=2)(always_fails)
    app.task(name="demo.reject", retry=FAST_RETRY)(reject)
    app.task(name="demo.slow", retry=FAST_RETRY, max_retries=1, timeout=0.5)(slow)
    app.task(name="demo.fetch", retry=FAST_RETRY)(fetch)
    app.task(name="demo.merge", retry=FAST_RETRY)(merge)
    # a rate-limited queue: every worker together starts at most 20 of these per second
    app.task(name="demo.limited", queue="limited", rate_limit="20/s", retry=FAST_RETRY)(work)
    return app


app = make_app()
