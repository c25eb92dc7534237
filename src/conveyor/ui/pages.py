"""The dashboard's read-only pages and the fragments htmx polls to keep them live.

Every page is one or two cheap engine calls (``stats``, one cursor page, one task):
nothing here loads all tasks, so a page costs the same with ten tasks or a million.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from conveyor.app import Conveyor
from conveyor.backends.base import TaskFilter
from conveyor.features.flow import FlowControl
from conveyor.models import Page, Stats, Task, WorkerState
from conveyor.priority import Band
from conveyor.states import State
from conveyor.ui import graph, params
from conveyor.ui.render import PREFIX, UiError, redirect, render
from conveyor.ui.session import Viewer

WAITING_STATES = frozenset({State.WAITING, State.SCHEDULED, State.PENDING, State.RETRYING})
ATTEMPT_ENDS = frozenset({"complete", "retry", "fail", "lease_expired", "lease_expired_final", "release", "cancel"})
MAX_GRAPH_NODES = 2000
BANDS = [b.value for b in Band]


def conveyor_of(request: Request) -> Conveyor:
    app: Conveyor = request.app.state.conveyor
    return app


class Throughput:
    """Finished-per-minute samples that this API process took while an overview was open.

    ``stats`` gives only the last minute; a short in-memory history makes the "last
    minutes" chart without another query. Samples are at least 10 s apart, 30 min kept.
    """

    def __init__(self, every: float = 10.0, keep: float = 1800.0) -> None:
        self.every, self.keep = every, keep
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, finished_last_minute: int, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if not self.samples or now - self.samples[-1][0] >= self.every:
            self.samples.append((now, finished_last_minute))
        while self.samples and now - self.samples[0][0] > self.keep:
            self.samples.popleft()

    def points(self, width: int = 300, height: int = 60) -> tuple[str, int]:
        """An SVG polyline's points over the kept window, and the peak it is scaled to."""
        if not self.samples:
            return "", 0
        start = self.samples[-1][0] - self.keep
        peak = max(1, *(v for _, v in self.samples))
        pts = [f"{(t - start) / self.keep * width:.1f},{height - v / peak * (height - 4):.1f}" for t, v in self.samples]
        return " ".join(pts), peak


class StatsCache:
    """``stats`` shared by every page of this process for ``ttl`` seconds.

    Each open overview polls every 2 s; with ten operators watching, the engine
    should count once per interval, not ten times (on SQLite it is a scan of an index).
    """

    def __init__(self, ttl: float = 1.0) -> None:
        self.ttl = ttl
        self.value: tuple[float, Stats] | None = None
        self.lock = asyncio.Lock()

    async def get(self, app: Conveyor, fresh: bool = False) -> Stats:
        """The shared figures, or (``fresh``) figures counted now, which are shared from then on."""
        async with self.lock:
            now = time.monotonic()
            if fresh or self.value is None or now - self.value[0] > self.ttl:
                self.value = (now, await app.stats_async())
            return self.value[1]


async def stats_of(request: Request, fresh: bool = False) -> Stats:
    state = request.app.state
    cache: StatsCache | None = getattr(state, "ui_stats", None)
    if cache is None:
        cache = state.ui_stats = StatsCache()
    return await cache.get(conveyor_of(request), fresh)


def throughput_of(request: Request) -> Throughput:
    state = request.app.state
    found: Throughput | None = getattr(state, "ui_throughput", None)
    if found is None:
        found = state.ui_throughput = Throughput()
    return found


async def _overview_data(request: Request) -> dict[str, Any]:
    app = conveyor_of(request)
    stats = await stats_of(request)
    workers = [w for w in await app.workers_async() if w.state is not WorkerState.OFFLINE]
    chart = throughput_of(request)
    chart.add(stats.finished_last_minute)
    points, peak = chart.points()
    return {"stats": stats, "workers": workers, "points": points, "peak": peak, "states": params.STATES, "bands": BANDS}


async def overview(request: Request, viewer: Viewer) -> Response:
    """Counts, throughput, queue depth, workers, breakers, DLQ: refreshed every 2 s."""
    return render(request, viewer, "overview.html", nav="overview", **await _overview_data(request))


async def overview_live(request: Request, viewer: Viewer) -> Response:
    return render(request, viewer, "_overview.html", **await _overview_data(request))


async def tasks(request: Request, viewer: Viewer) -> Response:
    """A filtered page of tasks, newest first; ``id`` jumps to one task."""
    q = request.query_params
    task_id = params.text(q, "id")
    if task_id:
        return redirect(f"{PREFIX}/tasks/{quote(task_id, safe='')}")
    flt = TaskFilter(
        state=params.state(q), queue=params.queue(q), name=params.text(q, "name"), label=params.text(q, "label")
    )
    limit = params.integer(q, "limit", 1, 500, 50)
    cursor = params.text(q, "cursor")
    page = await conveyor_of(request).list_tasks_async(flt, limit or 50, cursor)
    filters = {"state": flt.state or "", "queue": flt.queue or "", "name": flt.name or "", "label": flt.label or ""}
    kept = {k: v for k, v in filters.items() if v} | ({"limit": str(limit)} if limit != 50 else {})
    return render(
        request, viewer, "tasks.html", nav="tasks", page=page, filters=filters, kept=kept, cursor=cursor,
        states=params.STATES,
    )  # fmt: skip


@dataclass(slots=True)
class Attempt:
    """One attempt as read from the history: its claim and whatever ended it."""

    number: int
    worker_id: str | None
    started: Any
    ended: Any = None
    outcome: str = "running"
    reason: str | None = None

    @property
    def seconds(self) -> float | None:
        return None if self.ended is None else (self.ended - self.started).total_seconds()


def attempts_of(task: Task) -> list[Attempt]:
    found: list[Attempt] = []
    for entry in task.history:
        if entry.transition == "claim":
            found.append(Attempt(len(found) + 1, entry.worker_id, entry.at))
        elif found and found[-1].ended is None and entry.transition in ATTEMPT_ENDS:
            found[-1].ended, found[-1].outcome, found[-1].reason = entry.at, entry.transition, entry.reason
    return found


async def _task_data(request: Request) -> dict[str, Any]:
    task_id = request.path_params["task_id"]
    if len(task_id) > 200:
        raise UiError(400, "a task id has at most 200 characters")
    app = conveyor_of(request)
    task = await app.get_async(task_id)
    explanation = await app.explain_async(task_id) if task.state in WAITING_STATES else None
    return {"task": task, "attempts": attempts_of(task), "explanation": explanation}


async def task_page(request: Request, viewer: Viewer) -> Response:
    """One task: args, outcome, attempts, why it waits; cancel and retry for admins."""
    data = await _task_data(request)
    return render(request, viewer, "task.html", nav="tasks", notice=_notice(request), **data)


async def task_live(request: Request, viewer: Viewer) -> Response:
    return render(request, viewer, "_task.html", **await _task_data(request))


async def workflows(request: Request, viewer: Viewer) -> Response:
    """No listing of workflows exists in the engines: open one by id."""
    workflow_id = params.text(request.query_params, "id")
    if workflow_id:
        return redirect(f"{PREFIX}/workflows/{quote(workflow_id, safe='')}")
    return render(request, viewer, "workflows.html", nav="workflows")


async def _workflow_data(request: Request) -> dict[str, Any]:
    workflow_id = request.path_params["workflow_id"]
    if len(workflow_id) > 200:
        raise UiError(400, "a workflow id has at most 200 characters")
    flow = await conveyor_of(request).get_workflow_async(workflow_id)
    drawn = graph.layout(flow.nodes) if len(flow.nodes) <= MAX_GRAPH_NODES else None
    return {"flow": flow, "graph": drawn, "max_nodes": MAX_GRAPH_NODES}


async def workflow_page(request: Request, viewer: Viewer) -> Response:
    """The DAG as an SVG graph, each node coloured by state; live until it finishes."""
    return render(request, viewer, "workflow.html", nav="workflows", **await _workflow_data(request))


async def workflow_live(request: Request, viewer: Viewer) -> Response:
    return render(request, viewer, "_workflow.html", **await _workflow_data(request))


async def workers(request: Request, viewer: Viewer) -> Response:
    """Registered workers; ``state`` filters (offline ones are kept until the reaper drops them)."""
    wanted = params.choice(request.query_params, "state", [s.value for s in WorkerState])
    found = await conveyor_of(request).workers_async()
    shown = [w for w in found if wanted is None or w.state.value == wanted]
    shown.sort(key=lambda w: (w.state is WorkerState.OFFLINE, w.host, w.pid))
    return render(
        request, viewer, "workers.html", nav="workers", workers=shown, total=len(found), wanted=wanted or "",
        worker_states=[s.value for s in WorkerState],
    )  # fmt: skip


async def queues(request: Request, viewer: Viewer) -> Response:
    """Depth per state and band, pause state and limits; forms to change them for admins."""
    app = conveyor_of(request)
    infos = {q.name: q for q in await app.queues_async()}
    controls: dict[str, FlowControl] = {c.name: c for c in await app.flow_controls_async() if c.kind == "queue"}
    names = sorted(set(infos) | set(controls))
    return render(
        request, viewer, "queues.html", nav="queues", names=names, infos=infos, controls=controls,
        states=params.STATES, bands=BANDS, notice=_notice(request),
    )  # fmt: skip


async def dlq(request: Request, viewer: Viewer) -> Response:
    """Dead letters (``failed`` tasks), filtered by queue and name, a page at a time."""
    q = request.query_params
    queue, name = params.queue(q), params.text(q, "name")
    cursor = params.text(q, "cursor")
    # counted now, not the shared figures up to a second old: a task that just failed must
    # show (this page is opened by hand, never polled, so it counts once per view)
    stats = await stats_of(request, fresh=True)
    in_queue = (info.counts.get("failed", 0) for info in stats.queues if info.name == queue)
    failed = stats.dlq_size if queue is None else sum(in_queue)
    if failed or cursor:
        page = await conveyor_of(request).list_tasks_async(TaskFilter(State.FAILED, queue, name), 50, cursor)
    else:  # an empty DLQ: a newest-first listing by state could walk every task to find none
        page = Page(items=[])
    kept = {k: v for k, v in {"queue": queue, "name": name}.items() if v}
    return render(
        request, viewer, "dlq.html", nav="dlq", page=page, queue=queue or "", name=name or "", kept=kept,
        cursor=cursor, dlq_size=stats.dlq_size, notice=_notice(request),
    )  # fmt: skip


NOTICES = {
    "cancelled": "Task cancelled.",
    "retried": "Task sent back to pending.",
    "paused": "Queue paused.",
    "resumed": "Queue resumed.",
    "limits": "Queue limits saved.",
}


def _notice(request: Request) -> str | None:
    """A fixed sentence chosen by code: nothing from the URL is echoed into the page."""
    code = request.query_params.get("done", "")
    if code.startswith(("replayed:", "purged:")):
        verb, _, count = code.partition(":")
        plain = count.isascii() and count.isdigit() and len(count) <= 12  # not "²", not 5,000 digits
        return f"{verb.capitalize()} {int(count)} dead letter(s)." if plain else None
    return NOTICES.get(code)
