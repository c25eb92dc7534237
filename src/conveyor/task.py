"""The ``@app.task`` decorator's product: task definitions, submit options and handles."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from conveyor.errors import ConveyorError, InvalidInput
from conveyor.models import Task
from conveyor.retry import RetryPolicy
from conveyor.states import State

if TYPE_CHECKING:
    from conveyor.app import Conveyor

P = ParamSpec("P")
R = TypeVar("R")


class TaskFailed(ConveyorError):
    """``result()`` of a task that ended ``failed``; ``task`` holds its error."""

    code = "TaskFailed"

    def __init__(self, task: Task) -> None:
        err = task.error
        detail = f"{err.type}: {err.message}" if err else str(task.failure_reason)
        super().__init__(f"task {task.id} failed ({task.failure_reason}): {detail}", task_id=task.id)
        self.task = task


class TaskCancelled(ConveyorError):
    code = "TaskCancelled"


@dataclass(frozen=True, slots=True)
class SubmitOptions:
    """Per-submit options; ``None`` means "use the task's or the config's default"."""

    queue: str | None = None
    priority: int | str | None = None
    delay: float | None = None
    run_at: datetime | None = None
    labels: Sequence[str] = ()
    requires: Sequence[str] = ()
    depends_on: Sequence[str] = ()
    idempotency_key: str | None = None
    max_retries: int | None = None
    timeout: float | None = None
    retry: RetryPolicy | None = None


@dataclass(slots=True)
class TaskDef(Generic[P, R]):
    """A registered task: the function plus its defaults. Calling it runs it directly."""

    app: Conveyor
    fn: Callable[P, R] | Callable[P, Awaitable[R]]
    name: str
    queue: str = "default"
    priority: int | str | None = None
    max_retries: int | None = None
    timeout: float | None = None
    retry: RetryPolicy | None = None
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    permanent_on: tuple[type[BaseException], ...] = ()
    rate_limit: str | None = None  # cluster-wide, e.g. "50/s" (conveyor.features.flow)
    concurrency_limit: int | None = None  # running at most, cluster-wide
    breaker_threshold: int | None = None  # consecutive failures that open its breaker
    breaker_cooldown: float | None = None  # seconds the breaker stays open
    requires: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    is_async: bool = field(init=False)
    _signature: inspect.Signature = field(init=False, repr=False)
    _names: frozenset[str] = field(init=False, repr=False)
    _required: frozenset[str] = field(init=False, repr=False)
    _any_kw: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.is_async = inspect.iscoroutinefunction(self.fn)
        self._signature = sig = inspect.signature(self.fn)
        kw = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        params = sig.parameters.values()
        self._names = frozenset(p.name for p in params if p.kind in kw)
        # positional-only parameters can never be given as keywords: requiring them
        # sends such calls to Signature.bind, which explains the problem
        self._required = frozenset(
            p.name for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        )
        self._any_kw = any(p.kind is p.VAR_KEYWORD for p in params)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R | Awaitable[R]:
        return self.fn(*args, **kwargs)

    def check_args(self, args: dict[str, Any]) -> None:
        """Refuse arguments the function cannot accept, before anything is stored."""
        keys = args.keys()
        if self._required <= keys and (self._any_kw or keys <= self._names):
            return  # the common case, without the cost of Signature.bind
        try:
            self._signature.bind(**args)
        except TypeError as exc:
            raise InvalidInput(f"invalid args for task {self.name}: {exc}") from exc

    def options(self, **opts: Any) -> BoundTask[P, R]:
        """Submit with per-call options: ``send.options(delay=60).submit(...)``."""
        try:
            return BoundTask(self, SubmitOptions(**opts))
        except TypeError as exc:
            raise InvalidInput(f"unknown submit option: {exc}") from exc

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle:
        return BoundTask(self, SubmitOptions()).submit(*args, **kwargs)

    def map(self, kwargs_list: Sequence[dict[str, Any]]) -> list[TaskHandle]:
        """Submit this task once per keyword-argument dict, atomically (bulk fan-out)."""
        return self.app.submit_many(self.name, kwargs_list, SubmitOptions())

    async def map_async(self, kwargs_list: Sequence[dict[str, Any]]) -> list[TaskHandle]:
        return await self.app.submit_many_async(self.name, kwargs_list, SubmitOptions())

    async def submit_async(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle:
        return await BoundTask(self, SubmitOptions()).submit_async(*args, **kwargs)


@dataclass(frozen=True, slots=True)
class BoundTask(Generic[P, R]):
    """A task definition with submit options fixed."""

    task: TaskDef[P, R]
    opts: SubmitOptions

    def options(self, **opts: Any) -> BoundTask[P, R]:
        return BoundTask(self.task, replace(self.opts, **opts))

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle:
        _no_positional(args)
        return self.task.app.submit(self.task.name, dict(kwargs), self.opts)

    async def submit_async(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle:
        _no_positional(args)
        return await self.task.app.submit_async(self.task.name, dict(kwargs), self.opts)

    def map(self, kwargs_list: Sequence[dict[str, Any]]) -> list[TaskHandle]:
        return self.task.app.submit_many(self.task.name, kwargs_list, self.opts)

    async def map_async(self, kwargs_list: Sequence[dict[str, Any]]) -> list[TaskHandle]:
        return await self.task.app.submit_many_async(self.task.name, kwargs_list, self.opts)


def _no_positional(args: tuple[Any, ...]) -> None:
    if args:
        raise InvalidInput("tasks take keyword arguments only (args are stored as a JSON object)")


class TaskHandle:
    """A submitted task by id; ``refresh()`` reloads it, ``result()`` waits for it."""

    __slots__ = ("_app", "created", "id", "task")

    def __init__(self, app: Conveyor, task_id: str, *, created: bool = True, task: Task | None = None):
        self._app = app
        self.id = task_id
        self.created = created
        self.task = task

    def __repr__(self) -> str:
        return f"TaskHandle({self.id!r}, state={self.state!r})"

    @property
    def state(self) -> State | None:
        """State as of the last ``refresh()`` (``None`` before the first)."""
        return self.task.state if self.task else None

    def refresh(self) -> Task:
        self.task = self._app.get(self.id)
        return self.task

    async def refresh_async(self) -> Task:
        self.task = await self._app.get_async(self.id)
        return self.task

    def result(self, timeout: float | None = None) -> Any:
        """Wait for a terminal state; return the result, or raise ``TaskFailed``,
        ``TaskCancelled``, or ``TimeoutError`` after ``timeout`` seconds."""
        return self._app.run_sync(self.result_async(timeout))

    async def result_async(self, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.002
        while True:
            task = await self.refresh_async()
            if task.state == State.SUCCEEDED:
                return task.result
            if task.state == State.FAILED:
                raise TaskFailed(task)
            if task.state == State.CANCELLED:
                raise TaskCancelled(f"task {task.id} was cancelled", task_id=task.id)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"task {self.id} still {task.state} after {timeout} s")
            wait = delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
            await asyncio.sleep(wait)
            delay = min(delay * 2, 0.1)


def task_name_for(fn: Callable[..., Any]) -> str:
    """Default task name: ``module.function`` (``__main__`` is kept as is)."""
    return f"{fn.__module__}.{fn.__qualname__}"
