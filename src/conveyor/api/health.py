"""``GET /health``: a verdict from the backend's answer, the workers and the queue depths.

* ``unhealthy`` (HTTP 503): the backend did not answer.
* ``degraded``: no worker is live, a queue with ready work has no live worker
  serving it, a queue is near its ``max_length`` (it backs up), or a circuit breaker
  is open.
* ``healthy``: otherwise.
"""

from __future__ import annotations

import logging

from conveyor.api.schemas import Check, Health
from conveyor.app import Conveyor
from conveyor.models import QueueInfo, Stats, WorkerInfo, WorkerState

log = logging.getLogger("conveyor.api")

BACKLOG_RATIO = 0.9  # a queue at 90% of max_length is backing up


async def check_health(app: Conveyor) -> Health:
    try:
        stats = await app.stats_async()
        workers = await app.workers_async()
        bounds = await app.max_lengths_async()
    except Exception as exc:  # any failure to answer is the verdict, not a 500
        log.warning("health: backend did not answer: %s: %s", type(exc).__name__, exc)
        return Health(
            status="unhealthy",
            checks={"backend": Check(status="fail", detail=f"backend did not answer ({type(exc).__name__})")},
        )
    return assess(stats, workers, bounds)


def assess(stats: Stats, workers: list[WorkerInfo], max_lengths: dict[str, int] | None = None) -> Health:
    live = [w for w in workers if w.state != WorkerState.OFFLINE]
    checks = {
        "backend": Check(status="ok", detail="backend answered"),
        "workers": _workers_check(stats.queues, live),
        "queues": _backlog_check(stats.queues, max_lengths or {}),
        "breakers": Check(status="warn", detail="open: " + ", ".join(stats.open_breakers))
        if stats.open_breakers
        else Check(status="ok", detail="no open circuit breakers"),
    }
    degraded = any(c.status != "ok" for c in checks.values())
    return Health(status="degraded" if degraded else "healthy", checks=checks)


def _ready(q: QueueInfo) -> int:
    return q.counts.get("pending", 0) + q.counts.get("running", 0)


def _workers_check(queues: list[QueueInfo], live: list[WorkerInfo]) -> Check:
    if not live:
        return Check(status="warn", detail="no live worker")
    busy = [q.name for q in queues if _ready(q) > 0]
    unserved = [name for name in busy if not any(not w.queues or name in w.queues for w in live)]
    if unserved:
        return Check(status="warn", detail="no live worker for queue(s) with work: " + ", ".join(sorted(unserved)))
    return Check(status="ok", detail=f"{len(live)} live worker(s)")


def _backlog_check(queues: list[QueueInfo], max_lengths: dict[str, int]) -> Check:
    full = []
    for q in queues:
        bound = q.max_length or max_lengths.get(q.name)
        if bound and _unfinished(q) >= BACKLOG_RATIO * bound:
            full.append(f"{q.name} ({_unfinished(q)}/{bound})")
    if full:
        return Check(status="warn", detail="queue(s) backing up: " + ", ".join(full))
    return Check(status="ok", detail="no queue near its max_length")


def _unfinished(q: QueueInfo) -> int:
    return sum(n for state, n in q.counts.items() if state not in ("succeeded", "failed", "cancelled"))
