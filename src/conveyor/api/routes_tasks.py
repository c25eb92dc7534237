"""``/tasks``: submit (one or a batch), read, list, cancel, retry, explain."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response

from conveyor.api.deps import COMMON, Admin, App, Reader, Submitter, errors
from conveyor.api.errors import ErrorBody
from conveyor.api.schemas import BatchRequest, BatchResult
from conveyor.backends.base import TaskFilter
from conveyor.features.explain import Explanation
from conveyor.models import QUEUE_PATTERN, Page, Task, TaskSpec
from conveyor.states import State

router = APIRouter(prefix="/tasks", tags=["tasks"], responses=COMMON)

TaskId = Annotated[str, Path(min_length=1, max_length=200, description="Task id.")]


DEPENDENCY_UNKNOWN: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "A ``depends_on`` id names no task"}
}


@router.post(
    "", status_code=201, responses=DEPENDENCY_UNKNOWN | {200: {"model": Task, "description": "Idempotent repeat"}}
)
async def submit_task(spec: TaskSpec, response: Response, app: App, _: Submitter) -> Task:
    """Submit one task: 201 when stored, 200 when ``idempotency_key`` returned an earlier task."""
    (handle,) = await app.enqueue_many_async([spec])
    if not handle.created:
        response.status_code = 200
    return await app.get_async(handle.id)


@router.post(
    "/batch",
    status_code=201,
    responses=DEPENDENCY_UNKNOWN | {200: {"model": BatchResult, "description": "All were repeats"}},
)
async def submit_batch(body: BatchRequest, response: Response, app: App, _: Submitter) -> BatchResult:
    """Submit many tasks atomically: all are stored or none (e.g. ``QueueFull``)."""
    handles = await app.enqueue_many_async(body.tasks)
    ids = [h.id for h in handles]
    page = await app.list_tasks_async(TaskFilter(ids=ids), limit=len(ids))
    by_id = {t.id: t for t in page.items}
    if not any(h.created for h in handles):
        response.status_code = 200
    return BatchResult(items=[by_id[i] for i in ids], created=[h.created for h in handles])


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
