"""Single submits at volume: group commit, and the stored task without reading it back.

One ``POST /tasks`` used to cost a transaction of its own and a second engine call to
read the task it had just stored. ``SubmitBatcher`` instead gathers the submits that
arrive in the same event-loop iteration into one ``task_enqueue_many`` (one
transaction, one commit), and ``fresh_task`` describes a new task from what was
stored, as the engine would read it back (``GET /tasks/{id}`` returns the same).

Each submit keeps the outcome it would have had alone: if the shared batch is
refused for a per-task reason (``QueueFull``, an unknown ``depends_on`` id, or an
error no check foresaw), the tasks are submitted again one by one, in arrival order,
so one full queue does not fail the others. An outage (``BackendUnavailable``) fails
the whole batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from pydantic import TypeAdapter
from starlette.responses import Response

from conveyor.app import Conveyor
from conveyor.backends.base import Backend, Enqueued, EnqueueParams, TaskFilter
from conveyor.errors import BackendUnavailable, ConveyorError, TaskExists
from conveyor.models import HistoryEntry, NewTask, Task, TaskSpec
from conveyor.priority import band_of
from conveyor.states import State

# JSON bytes of a ``Task``: what FastAPI sends for a route that returns one.
dump_task = TypeAdapter(Task).dump_json


def task_response(task: Task, created: bool) -> Response:
    """201 with the task (200 for an idempotent repeat), without validating our own
    model once more as FastAPI does with a return value."""
    return Response(dump_task(task), status_code=201 if created else 200, media_type="application/json")


def fresh_task(new: NewTask, state: State) -> Task:
    """The task ``new`` as just stored with ``state``: attempt 0, one ``enqueue`` history
    entry at ``created_at`` (the engine contract), nothing run yet. ``model_construct``:
    every field comes from a validated spec or from ``Conveyor.build``."""
    created = datetime.fromtimestamp(new.created_at, UTC)  # as ``to_dt``, which also takes None
    return Task.model_construct(
        id=new.id,
        name=new.name,
        args=new.args,
        queue=new.queue,
        priority=new.priority,
        band=band_of(new.priority),
        state=state,
        labels=new.labels,
        requires=new.requires,
        run_at=datetime.fromtimestamp(new.run_at, UTC),
        depends_on=new.depends_on,
        idempotency_key=new.idempotency_key,
        max_retries=new.max_retries,
        timeout=new.timeout,
        retry=new.retry,
        attempts=0,
        result=None,
        error=None,
        failure_reason=None,
        worker_id=None,
        lease_expires_at=None,
        created_at=created,
        started_at=None,
        finished_at=None,
        updated_at=created,
        history=[HistoryEntry.model_construct(at=created, state=state, transition="enqueue")],
        workflow_id=new.workflow_id,
        workflow_key=new.workflow_key,
        headers=new.headers,
    )


class SubmitBatcher:
    """Group commit for single submits on one event loop (see the module docstring)."""

    def __init__(self, conveyor: Conveyor) -> None:
        self.conveyor = conveyor
        self._pending: list[tuple[NewTask, asyncio.Future[Enqueued]]] = []
        self._next: asyncio.Task[None] | None = None  # the flush that will take ``_pending``
        self._flushes: set[asyncio.Task[None]] = set()  # strong references until done

    async def submit(self, spec: TaskSpec) -> tuple[Task, bool]:
        """Store one task; ``(task, created)``, ``created`` false for an idempotent repeat."""
        new = self.conveyor.build(spec)  # InvalidInput here concerns this submit only
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Enqueued] = loop.create_future()
        scheduled = self._next
        if scheduled is None or scheduled.done() or scheduled.get_loop() is not loop:
            # The flush runs in the next loop iteration, after every submit already
            # scheduled in this one has joined the batch. (A flush cancelled before it
            # ran, or one of a loop that has since closed, is replaced.)
            if scheduled is not None and scheduled.get_loop() is not loop:
                self._pending = []  # submits of a loop that is gone: nobody waits for them
            self._next = flush = loop.create_task(self._flush())
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)
        self._pending.append((new, fut))
        done = await fut
        if done.created and not new.depends_on:
            return fresh_task(new, done.state), True
        # A repeat names an earlier task; a dependent may have settled at once: read it.
        return await self.conveyor.get_async(done.id), done.created

    async def submit_batch(self, specs: Sequence[TaskSpec]) -> tuple[list[Task], list[bool]]:
        """``POST /tasks/batch``: all stored or none, in one engine call of its own (as
        ``Conveyor.enqueue_many_async``); only repeats and dependents are read back."""
        now = time.time()
        new = [self.conveyor.build(spec, now) for spec in specs]
        done = await self._enqueue(await self.conveyor.backend(), new)
        pairs = list(zip(new, done, strict=True))
        built = [fresh_task(n, e.state) if e.created and not n.depends_on else None for n, e in pairs]
        unread = list(dict.fromkeys(e.id for t, e in zip(built, done, strict=True) if t is None))
        found: dict[str, Task] = {}
        if unread:
            page = await self.conveyor.list_tasks_async(TaskFilter(ids=unread), limit=len(unread))
            found = {t.id: t for t in page.items}
        tasks = [t if t is not None else found[e.id] for t, e in zip(built, done, strict=True)]
        return tasks, [e.created for e in done]

    async def _flush(self) -> None:
        self._next = None
        batch, self._pending = self._pending, []
        backend: Backend | None = None
        try:
            backend = await self.conveyor.backend()
            results = await self._enqueue(backend, [new for new, _ in batch])
        except ConveyorError as exc:
            if backend is None:
                _fail(batch, exc)
            elif len(batch) == 1 or isinstance(exc, BackendUnavailable):
                await self._keep_stored(backend, batch, exc)
            else:
                await self._one_by_one(backend, batch)
        except Exception as exc:  # not ours (a bug, or input no check caught): only its submit should fail
            if backend is None or len(batch) == 1:
                _fail(batch, exc)
            else:
                await self._one_by_one(backend, batch)
        except BaseException as exc:
            _fail(batch, exc)
            raise
        else:
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)

    async def _keep_stored(
        self, backend: Backend, batch: Sequence[tuple[NewTask, asyncio.Future[Enqueued]]], exc: Exception
    ) -> None:
        """Fail the submits of a refused batch, except those it stored anyway: a sharded
        ring writes each shard's part on its own, so a shard that is down refuses only
        its part (every other engine stores all or nothing, and this finds nothing)."""
        found = await asyncio.gather(*(backend.task_get(new.id) for new, _ in batch), return_exceptions=True)
        for (new, fut), task in zip(batch, found, strict=True):
            if fut.done():
                continue
            if isinstance(task, Task):
                fut.set_result(Enqueued(new.id, task.state, True))
            else:
                fut.set_exception(exc)

    async def _one_by_one(self, backend: Backend, batch: list[tuple[NewTask, asyncio.Future[Enqueued]]]) -> None:
        for i, (new, fut) in enumerate(batch):
            try:
                (result,) = await self._enqueue(backend, [new])
            except TaskExists as exc:  # its own id: the refused batch stored it on its shard
                await self._keep_stored(backend, [(new, fut)], exc)
            except Exception as exc:
                if not fut.done():
                    fut.set_exception(exc)
            except BaseException as exc:
                _fail(batch[i:], exc)
                raise
            else:
                if not fut.done():
                    fut.set_result(result)

    async def _enqueue(self, backend: Backend, tasks: Sequence[NewTask]) -> list[Enqueued]:
        return await backend.task_enqueue_many(EnqueueParams(tasks, await self.conveyor.max_lengths_async(backend)))


def _fail(batch: Sequence[tuple[NewTask, asyncio.Future[Enqueued]]], exc: BaseException) -> None:
    for _, fut in batch:
        if not fut.done():
            fut.set_exception(exc if isinstance(exc, Exception) else BackendUnavailable(f"submit interrupted: {exc!r}"))
