"""The running task's context: ``conveyor.current()`` inside task code.

The worker sets a ``TaskContext`` (in a context variable) around each attempt, in
every pool: coroutines see it directly, sync functions on pool threads through a
copied context, and process-pool children get its fields with the call. Outside an
attempt ``current()`` raises ``RuntimeError``; ``current_or_none()`` returns ``None``.

```python
from conveyor import current

@app.task
def report(region: str) -> dict:
    ctx = current()                   # ctx.task_id, ctx.attempt, ctx.workflow_id, ...
    totals = ctx.parent_results()     # {"load-eu": ..., "load-us": ...}: by node key
    return {"region": region, "sum": sum(totals.values())}
```

Async task code calls ``await ctx.parent_results_async()`` instead.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.app import Conveyor


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What task code may know about its own attempt."""

    task_id: str
    name: str
    queue: str
    attempt: int  # 1 on the first attempt
    workflow_id: str | None = None
    app: Conveyor | None = field(default=None, repr=False, compare=False)
    request_id: str | None = None  # of the HTTP request that submitted the task, if one did

    async def parent_results_async(self) -> dict[str, Any]:
        """Results of the tasks this one depends on: by node key within a workflow,
        by task id otherwise (all of them succeeded, or this task would not run)."""
        return await self._app().parent_results_async(self.task_id)

    def parent_results(self) -> dict[str, Any]:
        """``parent_results_async`` for sync task code (never call it on an event loop)."""
        return self._app().parent_results(self.task_id)

    def fields(self) -> tuple[str, str, str, int, str | None, str | None]:
        """The plain fields, sent to a process-pool child (the app is not picklable)."""
        return (self.task_id, self.name, self.queue, self.attempt, self.workflow_id, self.request_id)

    def _app(self) -> Conveyor:
        if self.app is None:
            raise RuntimeError("this task context has no Conveyor app to read parent results with")
        return self.app


_current: ContextVar[TaskContext | None] = ContextVar("conveyor_task", default=None)


def current() -> TaskContext:
    """The context of the attempt running now; ``RuntimeError`` outside task code."""
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError("conveyor.current() called outside a running task")
    return ctx


def current_or_none() -> TaskContext | None:
    return _current.get()


def enter(ctx: TaskContext) -> Token[TaskContext | None]:
    """Make ``ctx`` current (the worker, around one attempt); pass the token to ``leave``."""
    return _current.set(ctx)


def leave(token: Token[TaskContext | None]) -> None:
    _current.reset(token)
