"""``/tasks``: submit (one or a batch), read, list, cancel, retry, explain."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import TypeAdapter

from conveyor.api.deps import COMMON, Admin, App, Reader, Submitter, errors
from conveyor.api.errors import ErrorBody
from conveyor.api.schemas import BatchRequest, BatchResult
from conveyor.api.submit import SubmitBatcher, task_response
from conveyor.backends.base import TaskFilter
from conveyor.features.explain import Explanation
from conveyor.models import QUEUE_PATTERN, Page, Task, TaskSpec
from conveyor.states import State

router = APIRouter(prefix="/tasks", tags=["tasks"], responses=COMMON)

TaskId = Annotated[str, Path(min_length=1, max_length=200, description="Task id.")]

dump_batch = TypeAdapter(BatchResult).dump_json


DEPENDENCY_UNKNOWN: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorBody, "description": "Invalid: e.g. a ``depends_on`` id names no task (``ValidationError``)"}
}


@router.post(
    "",
    status_code=201,
    response_model=Task,
    responses=DEPENDENCY_UNKNOWN | {200: {"model": Task, "description": "Idempotent repeat"}},
)
async def submit_task(spec: TaskSpec, request: Request, _: Submitter) -> Response:
    """Submit one task: 201 when stored, 200 when ``idempotency_key`` returned an earlier task."""
    # ``SubmitFastPath`` answers the usual request before it gets here; this is the same
    # submit for everything else (and documents the route). The task is built by us, so
    # it is serialized as it is rather than validated again as a response model.
    batcher: SubmitBatcher = request.app.state.submitter
    task, created = await batcher.submit(spec)
    return task_response(task, created)


@router.post(
    "/batch",
    status_code=201,
    response_model=BatchResult,
    responses=DEPENDENCY_UNKNOWN | {200: {"model": BatchResult, "description": "All were repeats"}},
)
async def submit_batch(body: BatchRequest, request: Request, _: Submitter) -> Response:
    """Submit many tasks atomically: all are stored or none (e.g. ``QueueFull``)."""
    batcher: SubmitBatcher = request.app.state.submitter
    items, created = await batcher.submit_batch(body.tasks)
    result = BatchResult.model_construct(items=items, created=created)  # built by us: no second validation
    return Response(dump_batch(result), status_code=201 if any(created) else 200, media_type="application/json")


@router.get("", response_model=Page)
async def list_tasks(
    app: App,
    _: Reader,
    state: State | None = None,
    queue: Annotated[str | None, Query(pattern=QUEUE_PATTERN)] = None,
    name: Annotated[str | None, Query(max_length=200)] = None,
    label: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(max_length=200, description="``next_cursor`` of the previous page")] = None,
) -> Page:
    """Tasks newest first, a page at a time; pass ``next_cursor`` back as ``cursor``."""
    return await app.list_tasks_async(TaskFilter(state=state, queue=queue, name=name, label=label), limit, cursor)


@router.get("/{task_id}", responses=errors(404))
async def get_task(task_id: TaskId, app: App, _: Reader) -> Task:
    """One task with its history."""
    return await app.get_async(task_id)


@router.delete("/{task_id}", responses=errors(404, 409))
async def cancel_task(task_id: TaskId, app: App, _: Admin) -> Task:
    """Cancel a task that has not finished (409 ``InvalidStateTransition`` when it has)."""
    return await app.cancel_async(task_id)


@router.post("/{task_id}/retry", responses=errors(404, 409))
async def retry_task(task_id: TaskId, app: App, _: Admin) -> Task:
    """Replay a failed task: back to ``pending``, attempts reset (409 unless ``failed``)."""
    return await app.retry_async(task_id)


@router.get("/{task_id}/explain", responses=errors(404))
async def explain_task(task_id: TaskId, app: App, _: Reader) -> Explanation:
    """Why the task is not running yet: a reason code, one sentence, and the facts behind it."""
    return await app.explain_async(task_id)
