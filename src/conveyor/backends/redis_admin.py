"""The Redis engine's reads and admin writes: get, listings, queues, stats, flow settings, workers.

These touch one key, or only read: plain commands and pipelines, no scripts. Reads
are pipelined without MULTI, because Redis refuses every command inside MULTI once
it reaches ``maxmemory``, and an operator must still be able to look at a full store
(a task's hash and history list are read back to back, so a transition landing
between them could show one history entry more or less than the state says).

Listings walk the id index newest first and filter in Python, a chunk at a time:
fine for an operator's page, not a hot path. The dead-letter queue has its own
index, so DLQ listings, replays and purges only read failed tasks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from redis.exceptions import WatchError

from conveyor.backends.base import Enqueued, EnqueueParams, ListParams, TaskFilter
from conveyor.backends.redis_rows import restore_args, task_from, worker_from
from conveyor.errors import TaskNotFound
from conveyor.features.flow import FlowControl, QueueUpdate, apply_update, open_breakers
from conveyor.models import FINISHED_WINDOW, Page, QueueInfo, Stats, Task, WorkerInfo, WorkerState
from conveyor.priority import Band
from conveyor.states import State

if TYPE_CHECKING:
    from conveyor.backends.redis_engine import RedisBackend

CHUNK = 200  # ids read per round trip by listings
#: ready-set score ranges of each band: score = (10 - priority) * 1e10 + run_at
BAND_SCORES = {Band.HIGH: ("0", "(3e10"), Band.MEDIUM: ("3e10", "(7e10"), Band.LOW: ("7e10", "+inf")}


# --- tasks ---------------------------------------------------------------------------


async def load_tasks(b: RedisBackend, ids: list[str]) -> dict[str, Task]:
    """The stored tasks among ``ids``, in one round trip."""
    if not ids:
        return {}

    async def read() -> list[Any]:
        async with b.client.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hgetall(b.key("t", task_id))
                pipe.lrange(b.key("h", task_id), 0, -1)
            return list(await pipe.execute())

    raw = await b.guarded(read)
    return {task_id: task_from(task_id, raw[2 * i], raw[2 * i + 1]) for i, task_id in enumerate(ids) if raw[2 * i]}


async def task_get(b: RedisBackend, task_id: str) -> Task:
    task = (await load_tasks(b, [task_id])).get(task_id)
    if task is None:
        raise TaskNotFound(f"task {task_id} not found", task_id=task_id)
    return task


def _matches(task: Task, flt: TaskFilter) -> bool:
    return (
        (flt.state is None or task.state == flt.state)
        and (flt.queue is None or task.queue == flt.queue)
        and (flt.name is None or task.name == flt.name)
        and (flt.label is None or flt.label in task.labels)
    )


async def _walk(b: RedisBackend, flt: TaskFilter, cursor: str | None, want: int) -> list[Task]:
    """Up to ``want`` tasks matching ``flt``, newest first, with ids below ``cursor``."""
    found: list[Task] = []
    if flt.ids is not None:
        ids = sorted({i for i in flt.ids if cursor is None or i < cursor}, reverse=True)
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            tasks = await load_tasks(b, chunk)
            found += [tasks[i] for i in chunk if i in tasks and _matches(tasks[i], flt)]
            if len(found) >= want:
                break
        return found[:want]
    index = b.key("dlq") if flt.state is State.FAILED else b.key("all")
    top = "+" if cursor is None else "(" + cursor
    while len(found) < want:
        batch: list[str] = await b.guarded(partial(b.client.zrevrangebylex, index, top, "-", start=0, num=CHUNK))
        if not batch:
            break
        loaded = await load_tasks(b, batch)
        found += [loaded[i] for i in batch if i in loaded and _matches(loaded[i], flt)]
        top = "(" + batch[-1]
    return found[:want]


async def task_list(b: RedisBackend, params: ListParams) -> Page:
    limit = max(1, params.limit)
    found = await _walk(b, params.filter, params.cursor, limit + 1)
    page = found[:limit]
    return Page(items=page, next_cursor=page[-1].id if len(found) > limit else None)


async def workflow_get(b: RedisBackend, workflow_id: str) -> list[Task]:
    ids = await b.guarded(lambda: b.client.zrange(b.key("wf", workflow_id), 0, -1))
    tasks = await load_tasks(b, list(ids))
    return [tasks[i] for i in ids if i in tasks]


async def failed_ids(b: RedisBackend, flt: TaskFilter) -> list[str]:
    """Ids of the failed tasks matching ``flt`` (its state is forced to ``failed``)."""
    forced = TaskFilter(state=State.FAILED, queue=flt.queue, name=flt.name, label=flt.label, ids=flt.ids)
    return [t.id for t in await _walk(b, forced, None, 10**9)]


async def enqueued_again(b: RedisBackend, params: EnqueueParams) -> list[Enqueued]:
    """The outcome of a submit whose first attempt landed but whose reply was lost."""
    out = []
    for t in params.tasks:
        task_id = t.id
        state = await b.guarded(lambda tid=task_id: b.client.hget(b.key("t", tid), "s"))  # type: ignore[misc]
        created = state is not None
        if not created and t.idempotency_key is not None:
            task_id = await b.guarded(lambda t=t: b.client.hget(b.key("i", t.queue), t.idempotency_key))  # type: ignore[misc]
            state = await b.guarded(lambda tid=task_id: b.client.hget(b.key("t", tid), "s"))  # type: ignore[misc]
        out.append(Enqueued(id=task_id, state=State(state), created=created))
    return out


async def task_restore(b: RedisBackend, tasks: Sequence[Task]) -> int:
    """Exported tasks as they were, by ``restore.lua`` in one atomic step. Safe to
    repeat after a lost reply: tasks already stored are skipped."""
    args: list[Any] = [repr(time.time())]
    for t in tasks:
        args += restore_args(t)
    return int(await b.run("restore", args))


async def task_ahead(b: RedisBackend, task_id: str) -> int:
    state, queue = await b.guarded(lambda: b.client.hmget(b.key("t", task_id), "s", "q"))
    if state is None:
        raise TaskNotFound(f"task {task_id} not found", task_id=task_id)
    if state != State.PENDING.value:
        return 0
    rank = await b.guarded(lambda: b.client.zrank(b.key("r", queue), task_id))
    return int(rank or 0)


async def next_due(b: RedisBackend, queues: list[str]) -> float | None:
    """When the earliest scheduled/retrying task in ``queues`` (empty: all) falls due."""
    if not queues:
        queues = list(await b.guarded(lambda: b.client.smembers(b.key("queues"))))
    if not queues:
        return None

    async def read() -> list[Any]:
        async with b.client.pipeline(transaction=False) as pipe:
            for q in queues:
                pipe.zrange(b.key("d", q), 0, 0, withscores=True)
            return list(await pipe.execute())

    heads = [float(first[0][1]) for first in await b.guarded(read) if first]
    return min(heads) if heads else None


# --- queues and stats ----------------------------------------------------------------


async def queue_list(b: RedisBackend) -> list[QueueInfo]:
    names = sorted(await b.guarded(lambda: b.client.smembers(b.key("queues"))))
    controls = await flow_list(b)
    paused = {c.name for c in controls if c.kind == "queue" and c.paused}
    flow_queues = {c.name for c in controls if c.kind == "queue"}

    async def read() -> list[Any]:
        async with b.client.pipeline(transaction=False) as pipe:
            for q in names:
                pipe.hgetall(b.key("c", q))
                for low, high in BAND_SCORES.values():
                    pipe.zcount(b.key("r", q), low, high)
            return list(await pipe.execute())

    raw = await b.guarded(read) if names else []
    stride = 1 + len(BAND_SCORES)
    out: dict[str, QueueInfo] = {}
    for i, q in enumerate(names):
        counts = {s.value: int(raw[i * stride].get(s.value, 0)) for s in State}
        if not any(counts.values()) and q not in flow_queues:
            continue
        bands = {band.value: int(raw[i * stride + 1 + j]) for j, band in enumerate(BAND_SCORES)}
        out[q] = QueueInfo(name=q, counts=counts, pending_by_band=bands, paused=q in paused)
    for q in flow_queues - set(out):
        out[q] = QueueInfo(
            name=q,
            counts={s.value: 0 for s in State},
            pending_by_band={band.value: 0 for band in Band},
            paused=q in paused,
        )
    return [out[q] for q in sorted(out)]


async def stats(b: RedisBackend) -> Stats:
    queues = await queue_list(b)
    now = time.time()
    finished = int(await b.guarded(lambda: b.client.zcount(b.key("fin"), now - FINISHED_WINDOW, "+inf")))
    return Stats.collect(queues, await worker_list(b), finished, open_breakers(await flow_list(b)))


# --- flow control --------------------------------------------------------------------


def _flow_json(c: FlowControl) -> str:
    """The stored form: the model plus the bucket numbers ``flow.lua`` needs."""
    data = c.model_dump(mode="json")
    rate = c.rate
    if rate is not None:
        data["burst"], data["refill"] = repr(rate.burst), repr(rate.refill)  # strings: cjson keeps 14 digits
    return json.dumps(data, separators=(",", ":"))


async def queue_update(b: RedisBackend, update: QueueUpdate) -> FlowControl:
    """Read, change and write one control under WATCH, so a concurrent claim's spent
    tokens are never overwritten with stale ones; wakes the workers."""
    key, field = b.key("flow"), f"{update.kind}:{update.name}"

    async def write() -> FlowControl:
        async with b.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.hget(key, field)
                    current = None if raw is None else FlowControl.model_validate_json(raw)
                    control = apply_update(current, update)
                    pipe.multi()
                    if control.inert:
                        pipe.hdel(key, field)
                    else:
                        pipe.hset(key, field, _flow_json(control))
                    pipe.publish(b.key("wake"), update.name if update.kind == "queue" else "*")
                    await pipe.execute()
                    return control
                except WatchError:
                    continue

    return await b.guarded(write)


async def flow_list(b: RedisBackend) -> list[FlowControl]:
    raw = await b.guarded(lambda: b.client.hgetall(b.key("flow")))
    controls = [FlowControl.model_validate_json(v) for v in raw.values()]
    return sorted(controls, key=lambda c: c.key)


# --- queue bounds and metric totals ------------------------------------------------


async def queue_bound_set(b: RedisBackend, queue: str, max_length: int | None) -> None:
    if max_length is None:
        await b.guarded(lambda: b.client.hdel(b.key("bounds"), queue))
    else:
        await b.guarded(lambda: b.client.hset(b.key("bounds"), queue, max_length))


async def queue_bounds(b: RedisBackend) -> dict[str, int]:
    bounds = await b.guarded(lambda: b.client.hgetall(b.key("bounds")))
    return {queue: int(bound) for queue, bound in bounds.items()}


async def metrics_add(b: RedisBackend, deltas: Mapping[str, float]) -> None:
    """One hash, ``P:mt``; a MULTI makes the whole delta land at once (one key: no script)."""

    async def write() -> None:
        async with b.client.pipeline(transaction=True) as pipe:
            for key, value in sorted(deltas.items()):
                pipe.hincrbyfloat(b.key("mt"), key, value)
            await pipe.execute()

    await b.guarded(write)


async def metrics_read(b: RedisBackend) -> dict[str, float]:
    totals = await b.guarded(lambda: b.client.hgetall(b.key("mt")))
    return {k: float(v) for k, v in totals.items()}


# --- workers -------------------------------------------------------------------------


async def worker_register(b: RedisBackend, info: WorkerInfo) -> None:
    async def write() -> None:
        async with b.client.pipeline(transaction=True) as pipe:
            pipe.hset(b.key("workers"), info.id, info.model_dump_json())
            pipe.hdel(b.key("beats"), info.id)
            await pipe.execute()

    await b.guarded(write)


async def worker_deregister(b: RedisBackend, worker_id: str) -> None:
    async def read() -> list[Any]:
        async with b.client.pipeline(transaction=False) as pipe:
            pipe.hget(b.key("workers"), worker_id)
            pipe.hget(b.key("beats"), worker_id)
            return list(await pipe.execute())

    info, beat = await b.guarded(read)
    if info is None:
        return
    await worker_register(b, worker_from(info, beat).model_copy(update={"state": WorkerState.OFFLINE}))


async def worker_list(b: RedisBackend) -> list[WorkerInfo]:
    async def read() -> list[Any]:
        async with b.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(b.key("workers"))
            pipe.hgetall(b.key("beats"))
            return list(await pipe.execute())

    infos, beats = await b.guarded(read)
    cutoff = time.time() - b.offline_after
    out = []
    for worker_id in sorted(infos):
        worker = worker_from(infos[worker_id], beats.get(worker_id))
        if worker.last_heartbeat_at.timestamp() < cutoff:
            worker = worker.model_copy(update={"state": WorkerState.OFFLINE})
        out.append(worker)
    return out
