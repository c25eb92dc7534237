"""Operator resources: ``/queues``, ``/workers``, ``/dlq``, ``/stats``, ``/metrics``, ``/health``, ``/workflows``."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from conveyor.api.deps import COMMON, Admin, App, Reader, Submitter, errors
from conveyor.api.health import check_health
from conveyor.api.schemas import DlqFilter, Health, Purged, QueuePatch, Replayed
from conveyor.backends.base import TaskFilter
from conveyor.metrics import CONTENT_TYPE, cluster_metrics
from conveyor.models import QUEUE_PATTERN, Page, QueueInfo, Stats, WorkerInfo
from conveyor.states import State
from conveyor.workflows import Workflow, WorkflowSpec

router = APIRouter(responses=COMMON)

QueueName = Annotated[str, Path(pattern=QUEUE_PATTERN)]
QueueQ = Annotated[str | None, Query(pattern=QUEUE_PATTERN)]
NameQ = Annotated[str | None, Query(max_length=200)]


@router.get("/queues", tags=["queues"])
async def list_queues(app: App, _: Reader) -> list[QueueInfo]:
    """Depth of each queue per state, and ready work per priority band."""
    return await app.queues_async()


@router.patch("/queues/{name}", tags=["queues"])
async def update_queue(name: QueueName, patch: QueuePatch, app: App, _: Admin) -> QueueInfo:
    """Pause or resume a queue, or change its rate and concurrency limits or its
    ``max_length`` (cluster-wide); a field given as ``null`` removes that limit."""
    given = patch.model_dump(exclude_unset=True)
    clear = [field for field, value in given.items() if value is None]
    values = {field: value for field, value in given.items() if value is not None}
    return await app.queue_update_async(name, clear=clear, **values)


@router.get("/workers", tags=["workers"])
async def list_workers(app: App, _: Reader) -> list[WorkerInfo]:
    """Registered workers and their state (``offline`` once heartbeats stop)."""
    return await app.workers_async()


@router.get("/dlq", tags=["dlq"])
async def list_dlq(
    app: App,
    _: Reader,
    queue: QueueQ = None,
    name: NameQ = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Page:
    """Dead letters (``failed`` tasks), newest first, with their failure reason and error."""
    return await app.list_tasks_async(TaskFilter(state=State.FAILED, queue=queue, name=name), limit, cursor)


@router.post("/dlq/replay", tags=["dlq"])
async def replay_dlq(flt: DlqFilter, app: App, _: Admin) -> Replayed:
    """Send matching dead letters back to ``pending`` with attempts reset (all when no filter)."""
    count = await app.dlq_replay_async(TaskFilter(queue=flt.queue, name=flt.name, ids=flt.ids))
    return Replayed(replayed=count)


@router.delete("/dlq", tags=["dlq"])
async def purge_dlq(app: App, _: Admin, queue: QueueQ = None, name: NameQ = None) -> Purged:
    """Delete matching dead letters for good (all when no filter)."""
    return Purged(purged=await app.dlq_purge_async(TaskFilter(queue=queue, name=name)))


@router.get(
    "/metrics",
    tags=["ops"],
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}}}},
)
async def get_metrics(app: App, _: Reader) -> Response:
    """Prometheus text: cluster-wide figures read from the engine now (docs/observability.md)."""
    backend = await app.backend()
    stats, totals = await asyncio.gather(app.stats_async(), backend.metrics_read())
    return Response(cluster_metrics(stats, totals), media_type=CONTENT_TYPE)


@router.get("/stats", tags=["ops"])
async def get_stats(app: App, _: Reader) -> Stats:
    """Counts per state and queue, throughput, workers per state, open breakers."""
    return await app.stats_async()


@router.get("/health", tags=["ops"], responses={503: {"model": Health, "description": "Unhealthy"}})
async def get_health(app: App, response: Response) -> Health:
    """``healthy``, ``degraded`` or ``unhealthy`` (503), with the checks behind the verdict. No auth."""
    health = await check_health(app)
    if health.status == "unhealthy":
        response.status_code = 503
    return health


@router.post("/workflows", tags=["workflows"], status_code=201, responses=errors(404))
async def submit_workflow(spec: WorkflowSpec, app: App, _: Submitter) -> Workflow:
    """Submit a DAG atomically: ``{"nodes": [{"key", "name", "args", "depends_on": [keys], ...}]}``
    (422 on a cycle, a duplicate or an unknown key)."""
    return await app.submit_workflow_async(spec)


WorkflowId = Annotated[str, Path(min_length=1, max_length=200)]


@router.get("/workflows/{workflow_id}", tags=["workflows"], responses=errors(404))
async def get_workflow(workflow_id: WorkflowId, app: App, _: Reader) -> Workflow:
    """The DAG: its derived state and each node's task."""
    return await app.get_workflow_async(workflow_id)


@router.delete("/workflows/{workflow_id}", tags=["workflows"], responses=errors(404))
async def cancel_workflow(workflow_id: WorkflowId, app: App, _: Admin) -> Workflow:
    """Cancel every unfinished node of the workflow."""
    return await app.cancel_workflow_async(workflow_id)
