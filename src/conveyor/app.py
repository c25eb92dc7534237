"""``Conveyor``: the task registry and the client API (submit, get, cancel, replay, stats).

One async implementation per operation; the sync methods are thin wrappers that run
it on the app's one sync event loop (``conveyor.portal``), driven by the calling
thread, so sync code pays neither for a new loop nor for a thread switch per call.
Each event loop gets its own backend instance (engines bind connections to a loop);
instances on the same URL share the same stored state.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, TypeVar, overload

from pydantic import ValidationError

from conveyor import states, tracing
from conveyor.backends import make_backend
from conveyor.backends.base import Backend, CancelParams, EnqueueParams, ListParams, TaskFilter
from conveyor.config import Settings, load_settings
from conveyor.errors import InvalidInput, InvalidStateTransition, TaskNotFound, UnknownTask
from conveyor.features.explain import Explanation, explain_task
from conveyor.features.flow import FlowControl, QueueUpdate, check_update
from conveyor.features.limits import check_task_options, configured_updates
from conveyor.ids import ID_PATTERN, new_id, new_ids
from conveyor.models import NewTask, Page, QueueInfo, Stats, Task, TaskSpec, WorkerInfo
from conveyor.portal import Portal
from conveyor.priority import PriorityRule, parse_priority, resolve_priority
from conveyor.retry import RetryPolicy
from conveyor.schedules import CatchUp, Schedule, make_schedule
from conveyor.states import State
from conveyor.task import SubmitOptions, TaskDef, TaskHandle, task_name_for
from conveyor.workflows import Workflow, WorkflowBuilder, WorkflowSpec, plan, to_workflow

T = TypeVar("T")

GC_PAUSE_MIN = 256  # tasks in a bulk submit before the cyclic collector is paused for it
F = TypeVar("F", bound=Callable[..., Any])


class Conveyor:
    """A Conveyor application: ``app = Conveyor("sqlite:///conveyor.db")``."""

    def __init__(self, url: str | None = None, *, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings(url=url)
        if url is not None and settings is not None:
            self.settings = self.settings.model_copy(update={"url": url})
        self.url = self.settings.url
        self.tasks: dict[str, TaskDef[Any, Any]] = {}
        self.schedules: dict[str, Schedule] = {
            name: make_schedule(name, **cfg.model_dump()) for name, cfg in self.settings.schedules.items()
        }
        self._backends: dict[asyncio.AbstractEventLoop, Backend] = {}
        self._opening: dict[asyncio.AbstractEventLoop, asyncio.Future[Backend]] = {}
        self._portal: Portal | None = None
        self._portal_lock = threading.Lock()
        self._bounds: dict[str, int] = self.settings.max_lengths()
        self._bounds_until = 0.0  # time.monotonic() when the engine's bounds are read again
        make_backend(self.url)  # validate the URL now, not on first use

    # --- registry ------------------------------------------------------------------

    @overload
    def task(self, fn: F, /) -> TaskDef[Any, Any]: ...

    @overload
    def task(self, fn: None = None, /, **options: Any) -> Callable[[F], TaskDef[Any, Any]]: ...

    def task(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Register a function as a task. Options: ``name``, ``queue``, ``priority``,
        ``max_retries``, ``timeout``, ``retry`` (a ``RetryPolicy``), ``retry_on``,
        ``permanent_on``, ``rate_limit``, ``concurrency_limit``, ``breaker_threshold``,
        ``breaker_cooldown``, ``requires``, ``labels`` (flow options: docs/flow-control.md)."""

        def register(f: Callable[..., Any]) -> TaskDef[Any, Any]:
            known = set(TaskDef.__dataclass_fields__) - {"app", "fn", "is_async", "_signature"}
            unknown = set(options) - known
            if unknown:
                raise InvalidInput(f"unknown task option(s): {', '.join(sorted(unknown))}")
            opts = dict(options)
            for key in ("retry_on", "permanent_on", "requires", "labels"):
                if key in opts:
                    opts[key] = tuple(opts[key])
            if "priority" in opts and opts["priority"] is not None:
                opts["priority"] = parse_priority(opts["priority"])
            name = opts.pop("name", None) or task_name_for(f)
            if name in self.tasks:
                raise InvalidInput(f"task name {name!r} is already registered")
            check_task_options(name, opts)
            td: TaskDef[Any, Any] = TaskDef(self, f, name, **opts)
            for schedule in self.schedules.values():  # config schedules of this task
                if schedule.task == name:
                    _check_schedule_args(td, schedule)
            self.tasks[name] = td
            return td

        return register(fn) if fn is not None else register

    def periodic(
        self,
        cron: str | None = None,
        /,
        *,
        every: float | timedelta | None = None,
        name: str | None = None,
        task_name: str | None = None,
        args: dict[str, Any] | None = None,
        catch_up: CatchUp = "latest",
        max_catch_up: int = 10,
        **options: Any,
    ) -> Callable[[Any], TaskDef[Any, Any]]:
        """Register a task that fires on a schedule: ``@app.periodic("*/5 * * * *")`` (UTC)
        or ``@app.periodic(every=30)`` (seconds). ``name`` names the schedule (default:
        the task's name, which ``task_name`` sets); ``args`` are the task's arguments;
        ``queue`` and ``priority`` apply to both; other options go to ``@app.task``.
        Decorating a registered task only adds the schedule. A bad cron expression is
        ``InvalidInput`` here, before anything is registered. See ``docs/cron.md``."""
        make_schedule(name or "probe", task="probe", cron=cron, every=every, catch_up=catch_up)  # check timing first

        def register(f: Any) -> TaskDef[Any, Any]:
            opts = options if task_name is None else {**options, "name": task_name}
            td = f if isinstance(f, TaskDef) else self.task(**opts)(f)
            fields = {k: options[k] for k in ("queue", "priority") if k in options}
            schedule = make_schedule(
                name or td.name,
                task=td.name,
                cron=cron,
                every=every,
                args=dict(args or {}),
                catch_up=catch_up,
                max_catch_up=max_catch_up,
                **fields,
            )
            self.add_schedule(schedule)
            return td

        return register

    def add_schedule(self, schedule: Schedule) -> Schedule:
        """Declare a schedule (``conveyor.schedules.make_schedule`` builds one)."""
        if schedule.name in self.schedules:
            raise InvalidInput(f"schedule name {schedule.name!r} is already declared", schedule=schedule.name)
        td = self.tasks.get(schedule.task)
        if td is not None:
            _check_schedule_args(td, schedule)
        self.schedules[schedule.name] = schedule
        return schedule

    def get_task(self, name: str) -> TaskDef[Any, Any]:
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownTask(f"unknown task name {name!r}", name=name) from None

    # --- backend per loop ------------------------------------------------------------

    async def backend(self) -> Backend:
        """The opened backend for the running event loop (opened on first use)."""
        loop = asyncio.get_running_loop()
        backend = self._backends.get(loop)
        if backend is not None:
            return backend
        pending = self._opening.get(loop)
        if pending is not None:
            return await pending
        fut: asyncio.Future[Backend] = loop.create_future()
        self._opening[loop] = fut
        try:
            backend = make_backend(
                self.url,
                offline_after=self.settings.worker.offline_after,
                auto_migrate=self.settings.auto_migrate,
            )
            await backend.open()
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved
            raise
        finally:
            self._opening.pop(loop, None)
        self._backends[loop] = backend
        fut.set_result(backend)
        return backend

    async def aclose(self) -> None:
        """Close the backend of the running loop."""
        backend = self._backends.pop(asyncio.get_running_loop(), None)
        if backend is not None:
            await backend.close()

    def close(self) -> None:
        """Close the sync loop's backend and the loop (sync code's counterpart of ``aclose``)."""
        with self._portal_lock:
            portal, self._portal = self._portal, None
        if portal is not None and portal.pid == os.getpid():
            portal.close(self.aclose())

    def __enter__(self) -> Conveyor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Conveyor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def run_sync(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the sync loop and wait; refused inside a running loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coro.close()
            raise RuntimeError("sync Conveyor call inside a running event loop: use the *_async method")
        return self._sync_portal().run(coro)

    def _sync_portal(self) -> Portal:
        portal = self._portal
        if portal is not None and portal.pid == os.getpid():
            return portal
        with self._portal_lock:
            if self._portal is None or self._portal.pid != os.getpid():
                if self._portal is not None:  # forked: the parent's loop and connections are not ours
                    self._backends.pop(self._portal.loop, None)
                self._portal = Portal(self.settings.loop_spin)
            return self._portal

    # --- submit ------------------------------------------------------------------------

    def build(self, spec: TaskSpec, now: float | None = None, task_id: str | None = None) -> NewTask:
        """Resolve a submit into a stored task: defaults, priority rules, run_at (a bulk
        submit passes ids it drew at once with ``new_ids``)."""
        now = time.time() if now is None else now
        td = self.tasks.get(spec.name)
        if td is not None:
            td.check_args(spec.args)
        _check_json(spec.args)
        queue = spec.queue if "queue" in spec.model_fields_set or td is None else td.queue
        labels = list(spec.labels) or list(td.labels if td else ())
        requires = list(spec.requires) or list(td.requires if td else ())
        priority = spec.priority
        if priority is None and td is not None and td.priority is not None:
            priority = parse_priority(td.priority)
        if priority is None:
            priority = resolve_priority(
                self.settings.priority_rules,
                spec.name,
                queue,
                labels,
                spec.args,
                self.settings.default_priority,
            )
        run_at = now
        if spec.run_at is not None:
            run_at = spec.run_at.timestamp()
        elif spec.delay:
            run_at = now + spec.delay
        policy = spec.retry or (td.retry if td else None) or self.settings.retry
        max_retries = spec.max_retries
        if max_retries is None:
            max_retries = td.max_retries if td and td.max_retries is not None else policy.max_retries
        timeout = spec.timeout if spec.timeout is not None else (td.timeout if td else None)
        return NewTask(
            id=task_id or new_id(),
            name=spec.name,
            args=spec.args,
            queue=queue,
            priority=priority,
            run_at=run_at,
            created_at=now,
            labels=labels,
            requires=requires,
            depends_on=list(spec.depends_on),
            idempotency_key=spec.idempotency_key,
            max_retries=max_retries,
            timeout=timeout,
            retry=policy if isinstance(policy, RetryPolicy) else RetryPolicy(),
            headers=tracing.headers(self.settings.tracing),
        )

    def _shape(self, spec: TaskSpec, now: float, task_id: str) -> _Shape:
        """Resolve ``spec`` in full; its ``_Shape`` makes the tasks that differ from it
        only in id, args, run_at, dependencies and idempotency key."""
        first = self.build(spec, now, task_id)
        td = self.tasks.get(spec.name)
        rules = self.settings.priority_rules
        # rules that read args must see each task's; a given priority always wins
        per_task = spec.priority is None and (td is None or td.priority is None) and any(r.args for r in rules)
        default = self.settings.default_priority
        if not per_task:
            return _Shape(first, td, (), default, first.priority, frozenset())
        # a task whose args hold none of the keys the rules read gets what no args get
        plain = resolve_priority(rules, first.name, first.queue, first.labels, {}, default)
        return _Shape(first, td, rules, default, plain, frozenset(key for rule in rules for key in rule.args))

    def _build_many(self, specs: Sequence[TaskSpec], now: float) -> list[NewTask]:
        """``build`` for each spec, with the defaults resolved once per distinct name
        and options (a batch usually holds a few kinds of task, many times each)."""
        shapes: dict[tuple[Any, ...], _Shape] = {}
        new: list[NewTask] = []
        for spec, task_id in zip(specs, new_ids(len(specs)), strict=True):
            key = (
                spec.name,
                spec.queue if "queue" in spec.model_fields_set else None,
                spec.priority,
                tuple(spec.labels),
                tuple(spec.requires),
                spec.max_retries,
                spec.timeout,
                spec.retry,
            )
            shape = shapes.get(key)
            if shape is None:
                shape = shapes[key] = self._shape(spec, now, task_id)
                new.append(shape.first)
                continue
            run_at = now
            if spec.run_at is not None:
                run_at = spec.run_at.timestamp()
            elif spec.delay:
                run_at = now + spec.delay
            new.append(shape.task(task_id, spec.args, run_at, list(spec.depends_on), spec.idempotency_key))
        return new

    async def submit_many_async(
        self, name: str, args_list: Sequence[dict[str, Any]], opts: SubmitOptions | None = None
    ) -> list[TaskHandle]:
        """Submit one task type with many argument sets, atomically (all or none).

        The options are validated and resolved once, so a bulk fan-out costs little
        more than the engine's insert; priority rules that read ``args`` still apply
        to each task.
        """
        if not args_list:
            return []
        opts = opts or SubmitOptions()
        if opts.idempotency_key is not None and len(args_list) > 1:
            raise InvalidInput("an idempotency_key names one task: give each its own key through enqueue_many")
        with _gc_paused(len(args_list)):
            return await self._submit_many(name, args_list, opts)

    async def _submit_many(
        self, name: str, args_list: Sequence[dict[str, Any]], opts: SubmitOptions
    ) -> list[TaskHandle]:
        with tracing.submit_span(self.settings.tracing, name, len(args_list)):
            ids = new_ids(len(args_list))
            spec = spec_from(name, _as_args(args_list[0]), opts)
            shape = self._shape(spec, time.time(), ids[0])
            first = shape.first
            new = [first]
            for task_id, raw in zip(ids[1:], args_list[1:], strict=True):
                new.append(shape.task(task_id, _as_args(raw), first.run_at, first.depends_on, None))
            backend = await self.backend()
            done = await backend.task_enqueue_many(EnqueueParams(new, await self.max_lengths_async(backend)))
        return [TaskHandle(self, e.id, created=e.created) for e in done]

    def submit_many(
        self, name: str, args_list: Sequence[dict[str, Any]], opts: SubmitOptions | None = None
    ) -> list[TaskHandle]:
        return self.run_sync(self.submit_many_async(name, args_list, opts))

    async def enqueue_many_async(self, specs: Sequence[TaskSpec]) -> list[TaskHandle]:
        """Submit several tasks atomically: all are stored, or none (``QueueFull``)."""
        if not specs:
            return []
        with _gc_paused(len(specs)), tracing.submit_span(self.settings.tracing, specs[0].name, len(specs)):
            new = self._build_many(specs, time.time())
            backend = await self.backend()
            done = await backend.task_enqueue_many(EnqueueParams(new, await self.max_lengths_async(backend)))
            return [TaskHandle(self, e.id, created=e.created) for e in done]

    def enqueue_many(self, specs: Sequence[TaskSpec]) -> list[TaskHandle]:
        return self.run_sync(self.enqueue_many_async(specs))

    async def submit_async(
        self, name: str, args: dict[str, Any] | None = None, opts: SubmitOptions | None = None
    ) -> TaskHandle:
        """Submit one task by name (the worker maps the name to a function)."""
        spec = spec_from(name, args or {}, opts or _NO_OPTIONS)
        if self.settings.tracing:  # the submit span must enclose ``build``
            (handle,) = await self.enqueue_many_async([spec])
            return handle
        # the one-task path skips what only pays off for a batch (shapes, GC pause, span)
        task = self.build(spec, time.time(), new_id())
        backend = self._backends.get(asyncio.get_running_loop()) or await self.backend()
        bounds = self._bounds if time.monotonic() < self._bounds_until else await self.max_lengths_async(backend)
        (done,) = await backend.task_enqueue_many(EnqueueParams([task], bounds))
        return TaskHandle(self, done.id, created=done.created)

    def submit(self, name: str, args: dict[str, Any] | None = None, opts: SubmitOptions | None = None) -> TaskHandle:
        return self.run_sync(self.submit_async(name, args, opts))

    async def max_lengths_async(self, backend: Backend | None = None) -> dict[str, int]:
        """Each bounded queue's ``max_length``: config's, overridden by those set at run
        time (``PATCH /queues``), which are read from the engine at most every
        ``BOUNDS_TTL`` seconds, so a new bound reaches every submitter within that."""
        now = time.monotonic()
        if now >= self._bounds_until:
            stale = self._bounds_until > 0.0  # 0: never read, or just changed here: all wait
            if stale:  # one read at a time: submits arriving meanwhile keep these bounds
                self._bounds_until = now + BOUNDS_TTL
            try:
                stored = await (backend or await self.backend()).queue_bounds()
            except BaseException:
                self._bounds_until = 0.0
                raise
            self._bounds = {**self.settings.max_lengths(), **stored}
            self._bounds_until = time.monotonic() + BOUNDS_TTL
        return self._bounds

    # --- workflows ------------------------------------------------------------------------

    def workflow(self) -> WorkflowBuilder:
        """A builder for a DAG of tasks: ``wf.node(key, task, args, depends_on=[...])``, then
        ``wf.submit()``. See ``docs/workflows.md``."""
        return WorkflowBuilder(self)

    async def submit_workflow_async(self, spec: WorkflowSpec) -> Workflow:
        """Store every node of ``spec`` in one atomic engine call; ``InvalidInput`` (nothing
        stored) on a duplicate key, an unknown key, a cycle or a bad node."""
        now = time.time()
        workflow_id = new_id()
        with tracing.submit_span(self.settings.tracing, "workflow", len(spec.nodes)):
            tasks, _ = plan(workflow_id, spec, lambda s: self.build(s, now))
            backend = await self.backend()
            done = await backend.task_enqueue_many(EnqueueParams(tasks, await self.max_lengths_async(backend)))
        if all(e.created for e in done):
            return await self.get_workflow_async(workflow_id)
        # a node's idempotency key named an existing task: that task stands for the node
        ids = {t.workflow_key or t.id: e.id for t, e in zip(tasks, done, strict=True)}
        page = await backend.task_list(ListParams(TaskFilter(ids=list(ids.values())), limit=len(ids)))
        found = {t.id: t for t in page.items}
        return to_workflow(workflow_id, [found[i] for i in ids.values()], keys=list(ids))

    def submit_workflow(self, spec: WorkflowSpec) -> Workflow:
        return self.run_sync(self.submit_workflow_async(spec))

    async def get_workflow_async(self, workflow_id: str) -> Workflow:
        """The workflow's nodes and derived state; ``TaskNotFound`` if unknown."""
        tasks = await (await self.backend()).workflow_get(_known(workflow_id, "workflow"))
        if not tasks:
            raise TaskNotFound(f"workflow {workflow_id} not found", workflow_id=workflow_id)
        return to_workflow(workflow_id, tasks)

    def get_workflow(self, workflow_id: str) -> Workflow:
        return self.run_sync(self.get_workflow_async(workflow_id))

    async def cancel_workflow_async(self, workflow_id: str) -> Workflow:
        """Cancel every unfinished node, children first (so they read ``cancelled``, not
        ``dependency_failed``). Nodes are built parents first and ids are time-ordered,
        so the newest id is a leaf."""
        backend = await self.backend()
        for task in reversed((await self.get_workflow_async(workflow_id)).nodes.values()):
            if not task.terminal:
                with contextlib.suppress(InvalidStateTransition):  # it finished meanwhile
                    await backend.task_cancel(CancelParams(task.id, reason=f"workflow {workflow_id} cancelled"))
        return await self.get_workflow_async(workflow_id)

    def cancel_workflow(self, workflow_id: str) -> Workflow:
        return self.run_sync(self.cancel_workflow_async(workflow_id))

    async def parent_results_async(self, task_id: str) -> dict[str, Any]:
        """Results of the tasks ``task_id`` depends on: keyed by node key for parents in
        the same workflow, by task id otherwise."""
        backend = await self.backend()
        task = await backend.task_get(task_id)
        if not task.depends_on:
            return {}
        page = await backend.task_list(ListParams(TaskFilter(ids=task.depends_on), limit=len(task.depends_on)))
        same = task.workflow_id is not None
        return {
            (p.workflow_key if same and p.workflow_id == task.workflow_id and p.workflow_key else p.id): p.result
            for p in page.items
        }

    def parent_results(self, task_id: str) -> dict[str, Any]:
        return self.run_sync(self.parent_results_async(task_id))

    # --- reading and steering ------------------------------------------------------------

    async def get_async(self, task_id: str) -> Task:
        return await (await self.backend()).task_get(_known(task_id))

    def get(self, task_id: str) -> Task:
        return self.run_sync(self.get_async(task_id))

    async def cancel_async(self, task_id: str) -> Task:
        return await (await self.backend()).task_cancel(CancelParams(_known(task_id)))

    def cancel(self, task_id: str) -> Task:
        return self.run_sync(self.cancel_async(task_id))

    async def retry_async(self, task_id: str) -> Task:
        """Replay one failed task (``InvalidStateTransition`` unless it is ``failed``)."""
        backend = await self.backend()
        replayed = await backend.task_replay(TaskFilter(ids=[_known(task_id)]))  # guarded by state
        task = await backend.task_get(task_id)  # TaskNotFound for an unknown id
        if not replayed:
            states.check(task.state, "replay", task_id)  # says why it was refused
        return task

    def retry(self, task_id: str) -> Task:
        return self.run_sync(self.retry_async(task_id))

    async def list_tasks_async(self, flt: TaskFilter | None = None, limit: int = 50, cursor: str | None = None) -> Page:
        if cursor is not None and not ID_PATTERN.fullmatch(cursor):  # it would page from nowhere, silently
            raise InvalidInput(f"invalid cursor {cursor[:60]!r}: pass the next_cursor of the previous page")
        return await (await self.backend()).task_list(ListParams(flt or TaskFilter(), limit, cursor))

    def list_tasks(self, flt: TaskFilter | None = None, limit: int = 50, cursor: str | None = None) -> Page:
        return self.run_sync(self.list_tasks_async(flt, limit, cursor))

    # --- flow control (docs/flow-control.md) ------------------------------------------------

    async def flow_update_async(self, update: QueueUpdate) -> FlowControl:
        """Pause, resume or limit a queue or task name, cluster-wide, at run time."""
        return await (await self.backend()).queue_update(update)

    def flow_update(self, update: QueueUpdate) -> FlowControl:
        return self.run_sync(self.flow_update_async(update))

    async def queue_update_async(
        self,
        name: str,
        *,
        paused: bool | None = None,
        rate_limit: str | None = None,
        concurrency: int | None = None,
        max_length: int | None = None,
        clear: Sequence[str] = (),
    ) -> QueueInfo:
        """``PATCH /queues/{name}``: change one queue's settings; returns its info.
        ``clear`` names settings to remove (``rate_limit``, ``concurrency``, ``paused``,
        ``max_length``: back to config's bound, if any)."""
        backend = await self.backend()
        reset = frozenset(clear) - {"max_length"}
        if paused is not None or rate_limit is not None or concurrency is not None or reset:
            update = QueueUpdate(name, paused=paused, rate_limit=rate_limit, concurrency=concurrency, reset=reset)
            check_update(update)  # nothing is stored if any part is bad
        else:
            update = None
        if max_length is not None or "max_length" in clear:
            await backend.queue_bound_set(name, max_length)
            self._bounds_until = 0.0  # this process applies it from its next submit
        if update is not None:
            await self.flow_update_async(update)
        infos = {q.name: q for q in await self.queues_async()}
        return infos.get(name) or QueueInfo(
            name=name, paused=bool(paused), max_length=(await self.max_lengths_async(backend)).get(name)
        )

    async def flow_controls_async(self) -> list[FlowControl]:
        """Every queue and task name with flow settings or an open breaker."""
        return await (await self.backend()).flow_list()

    def flow_controls(self) -> list[FlowControl]:
        return self.run_sync(self.flow_controls_async())

    async def sync_limits_async(self) -> list[FlowControl]:
        """Write the limits that code and config declare into the engine (workers do
        this when they start)."""
        backend = await self.backend()
        return [await backend.queue_update(u) for u in configured_updates(self.settings, self.tasks)]

    def sync_limits(self) -> list[FlowControl]:
        return self.run_sync(self.sync_limits_async())

    async def explain_async(self, task_id: str) -> Explanation:
        """Why the task is not running (yet): a reason code, one sentence, the facts."""
        return await explain_task(await self.backend(), _known(task_id))

    def explain(self, task_id: str) -> Explanation:
        return self.run_sync(self.explain_async(task_id))

    async def stats_async(self) -> Stats:
        return await (await self.backend()).stats()

    def stats(self) -> Stats:
        return self.run_sync(self.stats_async())

    async def workers_async(self) -> list[WorkerInfo]:
        return await (await self.backend()).worker_list()

    def workers(self) -> list[WorkerInfo]:
        return self.run_sync(self.workers_async())

    async def queues_async(self) -> list[QueueInfo]:
        """Every queue, with the ``max_length`` its submits are held to."""
        backend = await self.backend()
        infos = await backend.queue_list()
        bounds = await self.max_lengths_async(backend)
        for info in infos:
            info.max_length = bounds.get(info.name, info.max_length)
        return infos

    def queues(self) -> list[QueueInfo]:
        return self.run_sync(self.queues_async())

    async def dlq_replay_async(self, flt: TaskFilter | None = None) -> int:
        """Replay dead letters matching ``flt`` (state is forced to ``failed``)."""
        flt = replace(flt or TaskFilter(), state=State.FAILED)
        return await (await self.backend()).task_replay(flt)

    def dlq_replay(self, flt: TaskFilter | None = None) -> int:
        return self.run_sync(self.dlq_replay_async(flt))

    async def dlq_purge_async(self, flt: TaskFilter | None = None) -> int:
        """Delete dead letters matching ``flt`` for good."""
        flt = replace(flt or TaskFilter(), state=State.FAILED)
        return await (await self.backend()).task_purge(flt)

    def dlq_purge(self, flt: TaskFilter | None = None) -> int:
        return self.run_sync(self.dlq_purge_async(flt))

    async def migrate_async(self) -> list[str]:
        """Apply pending schema migrations (also done on open unless ``auto_migrate`` is off)."""
        return await (await self.backend()).migrate()

    def migrate(self) -> list[str]:
        return self.run_sync(self.migrate_async())


_NO_OPTIONS = SubmitOptions()
BOUNDS_TTL = 2.0  # seconds a submitter keeps the engine's queue bounds
_OPTION_NAMES = tuple(SubmitOptions.__dataclass_fields__)


def spec_from(name: str, args: dict[str, Any], opts: SubmitOptions) -> TaskSpec:
    """A ``TaskSpec`` from a name, args and options; validation errors become ``InvalidInput``."""
    data: dict[str, Any] = {"name": name, "args": args}
    for key in _OPTION_NAMES:
        value = getattr(opts, key)
        if value is not None and value != ():
            data[key] = list(value) if isinstance(value, tuple | list) else value
    try:
        return TaskSpec(**data)
    except ValidationError as exc:
        raise InvalidInput(describe_validation(exc)) from exc


def _check_schedule_args(td: TaskDef[Any, Any], schedule: Schedule) -> None:
    """Refuse a schedule whose ``args`` its task cannot take, naming the schedule: else
    every tick would be stored and then fail."""
    try:
        td.check_args(schedule.args)
    except InvalidInput as exc:
        raise InvalidInput(f"schedule {schedule.name!r}: {exc.message}", schedule=schedule.name) from exc


def describe_validation(exc: Any) -> str:
    """One line naming each bad field, for CLI and API error messages."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "input"
        parts.append(f"{loc}: {err['msg']}")
    return "invalid task: " + "; ".join(parts)


# One shared encoder: ``json.dumps(..., allow_nan=False)`` builds a new encoder per call,
# which was about half the cost of this check on every submit.
_strict_json = json.JSONEncoder(allow_nan=False, ensure_ascii=False).encode


def _as_args(args: Any) -> dict[str, Any]:
    if not isinstance(args, dict):
        raise InvalidInput(f"task args must be a JSON object (a dict of keyword arguments), got {type(args).__name__}")
    return args


@contextlib.contextmanager
def _gc_paused(size: int) -> Iterator[None]:
    """No cyclic garbage collection while a bulk submit builds and stores its tasks.

    Every object a batch allocates stays alive until the engine has stored it, so a
    collection in between finds nothing to free, yet the many young objects trigger
    several (a third of a 1,000-task ``enqueue_many`` went there). Small batches, and
    processes that turned the collector off themselves, are left alone.
    """
    if size < GC_PAUSE_MIN or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass(slots=True)
class _Shape:
    """What the tasks of a bulk submit with one name and the same options share,
    resolved once (``first`` is the first of them); ``rules`` are the priority rules
    to apply to each task's args (empty when the priority does not depend on them)."""

    first: NewTask
    td: TaskDef[Any, Any] | None
    rules: Sequence[PriorityRule]
    default_priority: int
    plain_priority: int  # with ``rules``: the priority of a task whose args the rules do not read
    rule_keys: frozenset[str]  # the arg names ``rules`` read

    def task(
        self, task_id: str, args: dict[str, Any], run_at: float, depends_on: list[str], idempotency_key: str | None
    ) -> NewTask:
        """Another task like ``first``, its args checked as ``Conveyor.build`` does."""
        first = self.first
        if self.td is not None:
            self.td.check_args(args)
        _check_json(args)
        priority = first.priority
        if self.rules:
            priority = self.plain_priority
            if not self.rule_keys.isdisjoint(args):
                priority = resolve_priority(
                    self.rules, first.name, first.queue, first.labels, args, self.default_priority
                )
        # positional: a slotted dataclass takes them about twice as fast as by keyword
        return NewTask(
            task_id,
            first.name,
            args,
            first.queue,
            priority,
            run_at,
            first.created_at,
            first.labels,
            first.requires,
            depends_on,
            idempotency_key,
            first.max_retries,
            first.timeout,
            first.retry,
            None,
            None,
            first.headers,  # one submit, one context: shared, never mutated
        )


MAX_ARGS_DEPTH = 100  # objects and arrays within one another in a task's args


def _deeper(value: Any, levels: int) -> bool:
    """Whether ``value`` nests more than ``levels`` objects and arrays deep."""
    if isinstance(value, dict):
        return levels == 0 or any(_deeper(v, levels - 1) for v in value.values())
    if isinstance(value, list):
        return levels == 0 or any(_deeper(v, levels - 1) for v in value)
    return False


def _known(some_id: str, what: str = "task") -> str:
    """``some_id``, or ``TaskNotFound`` for text no id has the shape of: every engine
    answers alike (PostgreSQL would refuse a NUL as bad data, the others find nothing)."""
    if not ID_PATTERN.fullmatch(some_id):
        shown = some_id[:100] if some_id.isprintable() else repr(some_id[:100])
        details = {"workflow_id" if what == "workflow" else "task_id": some_id[:100]}
        raise TaskNotFound(f"{what} {shown} not found", **details)
    return some_id


def _check_json(args: dict[str, Any]) -> None:
    if not args:
        return
    try:
        text = _strict_json(args)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"task args must be JSON-serializable: {exc}") from exc
    if text.count("{") + text.count("[") > MAX_ARGS_DEPTH and _deeper(args, MAX_ARGS_DEPTH):
        # stored, such args could not be read back: pydantic writes ~255 levels at most
        raise InvalidInput(f"task args nest deeper than {MAX_ARGS_DEPTH} levels")
    if not text.isascii():
        try:
            text.encode()  # a lone surrogate: no engine can store it
        except UnicodeEncodeError as exc:
            raise InvalidInput(
                f"task args hold text that is not valid Unicode: {exc.reason} ({exc.object[exc.start : exc.end]!r})"
            ) from None
