"""The sharded engine: one ``Backend`` over several engines, joined by a consistent-hash ring.

URL grammar (``docs/sharding.md`` has the long form)::

    shards+<scheme>://<piece>[,<piece>...]

Each comma-separated piece becomes the engine URL ``<scheme>://<piece>``, so
``shards+postgresql://h1/db,h2/db`` is ``postgresql://h1/db`` and ``postgresql://h2/db``,
and ``shards+sqlite:///a.db,/b.db`` is ``sqlite:///a.db`` and ``sqlite:///b.db``. A
``?query`` belongs to the piece it ends (``h1/db?schema=a,h2/db?schema=b``); there is no
ring-wide query, so repeat an option on every piece that needs it, and write a comma
inside a piece as ``%2C``. A shard's place on the ring is its identity: the piece
without ``user:password@``, so reordering pieces or rotating a password moves nothing,
while renaming a host or a path re-homes that shard's keys.

Routing: a task goes to the shard of its partition key. Tasks linked by ``depends_on``
inside one batch travel together; a task whose parents are already stored goes to
their shard (parents on two shards: ``InvalidInput``, nothing stored). Otherwise the
key is the ``workflow_id`` (a DAG stays on one shard), else ``(queue,
idempotency_key)`` (so a repeat submit meets the first one), else the task's id.

Ring-wide versus per shard: one enqueue is atomic per shard (a batch that spans
shards may be half stored when one shard refuses its part); ``max_length`` is checked
ring-wide against every shard's count (exact for one submitter at a time); claims
spread over every shard, in claim order within each shard only; flow controls are
copied to every shard and enforced per shard. Workers live on a home shard chosen by
the ring. Every operation on one task id finds the task on whichever shard holds it:
first where this instance last saw it or where its id routes, then on all the others
at once. Fenced writes (outcomes, releases, heartbeats) for a task this instance has
not seen go to every shard: only the one holding the lease token can accept them.
A claim, a reap or a wait leaves out a shard that fails and raises only when every
shard fails, so one shard down does not stop the workers on the others.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import TypeVar
from urllib.parse import urlsplit

from conveyor import states
from conveyor.backends.base import (
    Backend,
    CancelParams,
    Claim,
    ClaimParams,
    Enqueued,
    EnqueueParams,
    HeartbeatParams,
    ListParams,
    OutboxClaimParams,
    OutboxEvent,
    OutboxSettle,
    Outcome,
    ReapParams,
    ReleaseParams,
    TaskFilter,
    WaitParams,
    check_events,
)
from conveyor.backends.ring import HashRing
from conveyor.errors import BackendUnavailable, ConveyorError, DependencyNotFound, InvalidInput, QueueFull, TaskNotFound
from conveyor.features.flow import BreakerState, FlowControl, QueueUpdate, claim_key
from conveyor.models import NewTask, Page, QueueInfo, Stats, Task, WorkerInfo, WorkerState

T = TypeVar("T")
R = TypeVar("R")

PREFIX = "shards+"
#: task id -> shard, remembered from enqueues, claims and lookups (oldest dropped first)
HOME_CACHE = 100_000
_LOOKUP_CHUNK = 500  # ids per listing when locating stored parents


# --- the URL -------------------------------------------------------------------------


def piece_urls(url: str) -> list[str]:
    """The engine URL of every shard named by a ``shards+<scheme>://a,b`` URL, in order."""
    if not url.lower().startswith(PREFIX) or "://" not in url:
        raise InvalidInput(f"not a sharded URL: {url!r} (expected shards+<scheme>://<piece>,<piece>...)")
    scheme, rest = url[len(PREFIX) :].split("://", 1)
    if not scheme or scheme.lower().startswith(PREFIX.rstrip("+")):
        raise InvalidInput(f"invalid sharded URL {url!r}: expected shards+<scheme>:// with a plain engine scheme")
    pieces = rest.split(",")
    if any(not piece.strip() for piece in pieces):
        raise InvalidInput(f"invalid sharded URL {url!r}: an empty piece between commas")
    return [f"{scheme}://{piece.strip()}" for piece in pieces]


def shard_identity(piece_url: str) -> str:
    """Where a shard sits on the ring: its URL after the scheme, without credentials."""
    rest = piece_url.split("://", 1)[1]
    netloc = urlsplit(piece_url).netloc
    if "@" in netloc:
        rest = rest.replace(netloc, netloc.rsplit("@", 1)[1], 1)
    return rest


# --- partition keys ------------------------------------------------------------------


def partition_key(task: NewTask | Task) -> str:
    """The ring key of a task stored on its own (no dependency decides for it)."""
    if task.workflow_id is not None:
        return f"wf:{task.workflow_id}"
    if task.idempotency_key is not None:
        return f"idem:{task.queue}\x1f{task.idempotency_key}"
    return task.id


def workflow_key(workflow_id: str) -> str:
    return f"wf:{workflow_id}"


def worker_key(worker_id: str) -> str:
    return f"worker:{worker_id}"


def _components(tasks: Sequence[NewTask]) -> tuple[list[int], dict[int, list[str]]]:
    """Union the batch positions linked by ``depends_on``: the root of each position, and
    per position the parents it names that are not in the batch."""
    root = list(range(len(tasks)))

    def find(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    where = {t.id: pos for pos, t in enumerate(tasks)}
    outside: dict[int, list[str]] = {}
    for pos, task in enumerate(tasks):
        for dep in task.depends_on:
            other = where.get(dep)
            if other is None:
                outside.setdefault(pos, []).append(dep)
            else:
                root[find(pos)] = find(other)
    return [find(pos) for pos in range(len(tasks))], outside


# --- the engine ----------------------------------------------------------------------


class ShardedBackend:
    """A ``Backend`` over the engines a ``shards+<scheme>://`` URL names (see the module docstring)."""

    def __init__(self, url: str, *, offline_after: float = 30.0, auto_migrate: bool = True) -> None:
        from conveyor.backends import make_backend  # the factory imports this module

        pieces = piece_urls(url)
        self.url = url
        self.offline_after = offline_after
        self.auto_migrate = auto_migrate
        self.ring = HashRing([shard_identity(piece) for piece in pieces])
        self.shards: list[Backend] = [
            make_backend(piece, offline_after=offline_after, auto_migrate=auto_migrate) for piece in pieces
        ]
        self._homes: dict[str, int] = {}
        self._turn = 0

    # --- where tasks live --------------------------------------------------------------

    def _remember(self, task_id: str, shard: int) -> None:
        homes = self._homes
        if task_id not in homes and len(homes) >= HOME_CACHE:
            del homes[next(iter(homes))]
        homes[task_id] = shard

    def _guess(self, task_id: str) -> int:
        """The likeliest shard of a task: where this instance last saw it, else its id's."""
        known = self._homes.get(task_id)
        return self.ring.shard_of(task_id) if known is None else known

    async def _on_owner(self, task_id: str, op: Callable[[Backend], Awaitable[T]]) -> T:
        """Run ``op`` on the shard holding ``task_id``: the likeliest first, then all others."""
        first = self._guess(task_id)
        try:
            result = await op(self.shards[first])
        except TaskNotFound:
            pass
        else:
            self._remember(task_id, first)
            return result
        others = [i for i in range(len(self.shards)) if i != first]
        results = await asyncio.gather(*(op(self.shards[i]) for i in others), return_exceptions=True)
        failure: BaseException | None = None
        for shard, res in zip(others, results, strict=True):
            if not isinstance(res, BaseException):
                self._remember(task_id, shard)
                return res
            if not isinstance(res, TaskNotFound) and failure is None:
                failure = res
        if failure is not None:
            raise failure
        self._homes.pop(task_id, None)
        raise TaskNotFound(f"task {task_id} not found", task_id=task_id)

    async def _locate(self, ids: Sequence[str]) -> dict[str, int]:
        """The shard of each stored task in ``ids`` (unknown ids are left out)."""
        found = {i: self._homes[i] for i in ids if i in self._homes}
        rest = [i for i in dict.fromkeys(ids) if i not in found]
        for start in range(0, len(rest), _LOOKUP_CHUNK):
            chunk = rest[start : start + _LOOKUP_CHUNK]
            params = ListParams(filter=TaskFilter(ids=chunk), limit=len(chunk))
            pages = await asyncio.gather(*(shard.task_list(params) for shard in self.shards))
            for shard, page in enumerate(pages):
                for task in page.items:
                    found.setdefault(task.id, shard)
                    self._remember(task.id, shard)
        return found

    def _rotation(self) -> list[int]:
        """Every shard, starting one further on each call, so no shard is always first."""
        n = len(self.shards)
        start = self._turn % n
        self._turn += 1
        return [(start + i) % n for i in range(n)]

    async def _spread(
        self, limit: int, take: Callable[[int, int], Awaitable[R]], size: Callable[[R], int]
    ) -> list[tuple[int, R]]:
        """Split ``limit`` over every shard, then hand what the drained ones left to the
        others, until ``limit`` is met or every shard has given what it has.

        A shard that fails is left out (its share goes to the others), so one shard down
        does not stop the ring and tasks already leased elsewhere are not dropped; the
        error is raised only when no shard answered."""
        candidates, remaining = self._rotation(), limit
        got: list[tuple[int, R]] = []
        failure: BaseException | None = None
        asks = _shares(remaining, candidates)  # every shard, even with 0: a claim also promotes
        while asks:  # the asks add up to ``remaining``: each round fills it or drains a shard
            results = await asyncio.gather(*(take(shard, k) for shard, k in asks), return_exceptions=True)
            drained: set[int] = set()
            for (shard, k), res in zip(asks, results, strict=True):
                if isinstance(res, BaseException):
                    if not isinstance(res, Exception):
                        raise res
                    failure, drained = failure or res, drained | {shard}
                    continue
                got.append((shard, res))
                remaining -= size(res)
                if size(res) < k:
                    drained.add(shard)
            candidates = [shard for shard in candidates if shard not in drained]
            asks = [(s, k) for s, k in _shares(remaining, candidates) if k > 0] if remaining > 0 else []
        if failure is not None and not got:
            raise failure
        return got

    # --- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Open every shard at once; if one fails, close the others and raise."""
        results = await asyncio.gather(*(shard.open() for shard in self.shards), return_exceptions=True)
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            await self.close()
            raise failure
        try:
            if self.auto_migrate:  # else the schema may not exist yet: ``migrate`` copies them
                await self._copy_controls()
        except BaseException:
            await self.close()
            raise

    async def _copy_controls(self) -> None:
        """Give a shard that lacks a flow control the others keep (a shard just added to
        the ring) the same settings, so a paused queue stays paused ring-wide."""
        if len(self.shards) < 2:
            return
        lists = await asyncio.gather(*(shard.flow_list() for shard in self.shards))
        known: dict[tuple[str, str], FlowControl] = {}
        for controls in lists:
            for control in controls:
                known.setdefault(control.key, control)
        copies = [
            shard.queue_update(
                QueueUpdate(
                    c.name,
                    c.kind,
                    paused=c.paused,
                    rate_limit=c.rate_limit,
                    concurrency=c.concurrency,
                    breaker_threshold=c.breaker_threshold,
                    breaker_cooldown=c.breaker_cooldown,
                )
            )
            for shard, controls in zip(self.shards, lists, strict=True)
            for key, c in known.items()
            if key not in {control.key for control in controls}
        ]
        await asyncio.gather(*copies)

    async def close(self) -> None:
        results = await asyncio.gather(*(shard.close() for shard in self.shards), return_exceptions=True)
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            raise failure

    async def migrate(self) -> list[str]:
        """Migrate every shard; each name applied reads ``shard <i>: <name>``."""
        applied = await asyncio.gather(*(shard.migrate() for shard in self.shards))
        await self._copy_controls()
        return [f"shard {i}: {name}" for i, names in enumerate(applied) for name in names]

    # --- task store ----------------------------------------------------------------------

    async def task_enqueue_many(self, params: EnqueueParams) -> list[Enqueued]:
        """Store each task on its shard, one atomic write per shard, all shards at once."""
        tasks = list(params.tasks)
        if not tasks:
            return []
        placed = await self._place(tasks)
        groups: dict[int, list[int]] = {}
        for pos, shard in enumerate(placed):
            groups.setdefault(shard, []).append(pos)
        bounds = await self._bounds(tasks, placed, params.max_length)
        writes = [
            self.shards[shard].task_enqueue_many(EnqueueParams([tasks[p] for p in positions], bounds.get(shard, {})))
            for shard, positions in groups.items()
        ]
        results = await asyncio.gather(*writes, return_exceptions=True)
        out: list[Enqueued | None] = [None] * len(tasks)
        failure: BaseException | None = None
        for (shard, positions), res in zip(groups.items(), results, strict=True):
            if isinstance(res, BaseException):
                failure = failure or res
                continue
            for pos, done in zip(positions, res, strict=True):
                out[pos] = done
                self._remember(done.id, shard)
        if failure is not None:
            stored = [done.id for done in out if done is not None and done.created]
            if stored and isinstance(failure, ConveyorError):  # say what the other shards kept
                failure.details.setdefault("stored_on_other_shards", stored)
            raise failure
        return [done for done in out if done is not None]

    async def _place(self, tasks: Sequence[NewTask]) -> list[int]:
        """The shard of every task in the batch (see "Routing" in the module docstring)."""
        if not any(t.depends_on for t in tasks):
            return [self.ring.shard_of(partition_key(t)) for t in tasks]
        roots, outside = _components(tasks)
        stored = await self._locate([dep for deps in outside.values() for dep in deps])
        for deps in outside.values():
            missing = next((dep for dep in deps if dep not in stored), None)
            if missing is not None:
                raise DependencyNotFound(f"a task depends on unknown task {missing}", task_id=missing)
        members: dict[int, list[int]] = {}
        for pos, root in enumerate(roots):
            members.setdefault(root, []).append(pos)
        shard_of_root: dict[int, int] = {}
        for root, positions in members.items():
            parents = {stored[dep] for pos in positions for dep in outside.get(pos, ())}
            if len(parents) > 1:
                raise InvalidInput(
                    "the dependencies of one submit live on different shards; a task can only depend on tasks "
                    "of one shard (submit related tasks together, or as one workflow)",
                    shards=sorted(parents),
                )
            shard_of_root[root] = parents.pop() if parents else self._group_shard([tasks[p] for p in positions])
        return [shard_of_root[root] for root in roots]

    def _group_shard(self, group: Sequence[NewTask]) -> int:
        """Tasks linked in one batch share a key: a workflow id, else the first idempotency
        key, else the first task's id."""
        workflow = next((t.workflow_id for t in group if t.workflow_id is not None), None)
        if workflow is not None:
            return self.ring.shard_of(workflow_key(workflow))
        keyed = next((t for t in group if t.idempotency_key is not None), group[0])
        return self.ring.shard_of(partition_key(keyed))

    async def _bounds(
        self, tasks: Sequence[NewTask], placed: Sequence[int], max_length: dict[str, int]
    ) -> dict[int, dict[str, int]]:
        """Per-shard ``max_length`` that makes the bound ring-wide: each shard may hold
        what the others (and this batch's part on them) leave. ``QueueFull`` at once,
        before any write, when the batch cannot fit whatever the shards answer."""
        bounded = {t.queue for t in tasks if t.queue in max_length}
        if not bounded:
            return {}
        if len(self.shards) == 1:
            return {0: {q: max_length[q] for q in bounded}}
        infos = await asyncio.gather(*(shard.queue_list() for shard in self.shards))
        held = [
            Counter({q.name: sum(q.counts.get(s.value, 0) for s in states.ACTIVE) for q in info if q.name in bounded})
            for info in infos
        ]
        for pos, task in enumerate(tasks):
            if task.queue in bounded and task.idempotency_key is None:  # a keyed one may be a repeat
                held[placed[pos]][task.queue] += 1
        bounds: dict[int, dict[str, int]] = {}
        for queue in bounded:
            total = sum(counts[queue] for counts in held)
            bound = max_length[queue]
            if total > bound:
                raise QueueFull(
                    f"queue {queue!r} is full ({bound} unfinished tasks at most)", queue=queue, max_length=bound
                )
            for shard in set(placed):
                bounds.setdefault(shard, {})[queue] = bound - (total - held[shard][queue])
        return bounds

    async def task_claim(self, params: ClaimParams) -> Claim:
        """Claim from every shard at once, the limit split evenly (the first shard turns
        with each call); a shard that runs dry leaves its share to the others."""

        async def take(shard: int, limit: int) -> Claim:
            return await self.shards[shard].task_claim(replace(params, limit=limit))

        got = await self._spread(params.limit, take, lambda c: len(c.tasks))
        now = time.time() if params.now is None else params.now
        claimed = []
        for shard, claim in got:
            for task in claim.tasks:
                self._remember(task.id, shard)
                claimed.append(task)
        claimed.sort(key=lambda t: claim_key(t.priority, t.run_at, t.id, now, params.aging_interval))
        dues = [claim.next_due for _, claim in got if claim.next_due is not None]
        return Claim(tasks=claimed, next_due=min(dues, default=None))

    async def task_finish_many(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """Each outcome to its task's shard; one this instance never saw goes to all
        (fenced by its lease token, only the holding shard accepts it)."""
        calls = self._fan_out(outcomes, lambda o: o.task_id)
        results = await asyncio.gather(
            *(self.shards[shard].task_finish_many([outcomes[p] for p in pos]) for shard, pos in calls)
        )
        out = [False] * len(outcomes)
        for (_, positions), oks in zip(calls, results, strict=True):
            for pos, ok in zip(positions, oks, strict=True):
                out[pos] = out[pos] or ok
        return out

    def _fan_out(self, items: Sequence[T], task_id: Callable[[T], str]) -> list[tuple[int, list[int]]]:
        """Positions of ``items`` per shard: a known task's shard, or every shard."""
        per: dict[int, list[int]] = {}
        every = range(len(self.shards))
        for pos, item in enumerate(items):
            known = self._homes.get(task_id(item))
            for shard in every if known is None else (known,):
                per.setdefault(shard, []).append(pos)
        return list(per.items())

    async def task_release(self, params: ReleaseParams) -> int:
        calls = self._fan_out(params.leases, lambda lease: lease.task_id)
        leases = params.leases
        counts = await asyncio.gather(
            *(self.shards[s].task_release(replace(params, leases=[leases[p] for p in pos])) for s, pos in calls)
        )
        return sum(counts)

    async def task_reap_expired(self, params: ReapParams) -> list[str]:
        async def take(shard: int, limit: int) -> list[str]:
            return await self.shards[shard].task_reap_expired(replace(params, limit=limit))

        got = await self._spread(params.limit, take, len)
        return [task_id for _, ids in got for task_id in ids]

    async def task_cancel(self, params: CancelParams) -> Task:
        return await self._on_owner(params.task_id, lambda shard: shard.task_cancel(params))

    async def task_get(self, task_id: str) -> Task:
        return await self._on_owner(task_id, lambda shard: shard.task_get(task_id))

    async def task_wait(self, params: WaitParams) -> None:
        """Wait on every shard at once; the first to wake wins and the others are cancelled.
        A shard whose wait fails is left out; the error is raised only if every one fails."""
        waits = {asyncio.ensure_future(shard.task_wait(params)) for shard in self.shards}
        failure: BaseException | None = None
        try:
            while waits:
                done, waits = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for wait in done:
                    exc = wait.exception()
                    if exc is None:
                        return
                    failure = failure or exc
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        assert failure is not None
        raise failure

    # --- admin ---------------------------------------------------------------------------

    async def task_list(self, params: ListParams) -> Page:
        """Newest first across shards: every shard's page after the cursor, merged by id.

        The cursor is the last id shown, which every engine's cursor is, so one
        cursor serves every shard and stays valid while tasks arrive."""
        limit = max(1, params.limit)
        pages = await asyncio.gather(*(shard.task_list(replace(params, limit=limit)) for shard in self.shards))
        items = sorted((task for page in pages for task in page.items), key=lambda t: t.id, reverse=True)
        more = len(items) > limit or any(page.next_cursor is not None for page in pages)
        items = items[:limit]
        return Page(items=items, next_cursor=items[-1].id if more and items else None)

    async def workflow_get(self, workflow_id: str) -> list[Task]:
        """From the workflow's shard; from all of them if it is not there (the ring changed)."""
        home = self.ring.shard_of(workflow_key(workflow_id))
        tasks = await self.shards[home].workflow_get(workflow_id)
        if tasks or len(self.shards) == 1:
            return tasks
        others = [shard for i, shard in enumerate(self.shards) if i != home]
        found = await asyncio.gather(*(shard.workflow_get(workflow_id) for shard in others))
        return sorted((task for tasks in found for task in tasks), key=lambda t: t.id)

    async def task_replay(self, flt: TaskFilter) -> int:
        return sum(await asyncio.gather(*(shard.task_replay(flt) for shard in self.shards)))

    async def task_purge(self, flt: TaskFilter) -> int:
        return sum(await asyncio.gather(*(shard.task_purge(flt) for shard in self.shards)))

    async def task_restore(self, tasks: Sequence[Task]) -> int:
        """Each task to the shard its key names, as a submit would place it: a workflow's
        by the workflow, a dependent with its first parent (restored in this call or
        stored already), others by idempotency key or id."""
        parents = {dep for t in tasks if t.workflow_id is None for dep in t.depends_on[:1]}
        stored = await self._locate([p for p in parents if p not in {t.id for t in tasks}])
        placed: dict[str, int] = {}
        for task in sorted(tasks, key=lambda t: t.id):  # ids are time-sortable: parents first
            parent = task.depends_on[0] if task.depends_on and task.workflow_id is None else None
            if parent is not None and (parent in placed or parent in stored):
                placed[task.id] = placed.get(parent, stored.get(parent, 0))
            else:
                placed[task.id] = self.ring.shard_of(partition_key(task))
        parts: dict[int, list[Task]] = {}
        for task in tasks:
            parts.setdefault(placed[task.id], []).append(task)
        counts = await asyncio.gather(*(self.shards[i].task_restore(part) for i, part in parts.items()))
        for i, part in parts.items():
            for task in part:
                self._remember(task.id, i)
        return sum(counts)

    async def queue_list(self) -> list[QueueInfo]:
        return _merge_queues(await asyncio.gather(*(shard.queue_list() for shard in self.shards)))

    async def stats(self) -> Stats:
        """Every shard's counts added up; workers counted once from the merged registry."""
        every, workers = await asyncio.gather(
            asyncio.gather(*(shard.stats() for shard in self.shards)), self.worker_list()
        )
        counts: Counter[str] = Counter()
        for stats in every:
            counts.update(stats.counts)
        by_state = {state.value: 0 for state in WorkerState}
        for worker in workers:
            by_state[worker.state.value] += 1
        return Stats(
            counts=dict(counts),
            queues=_merge_queues([stats.queues for stats in every]),
            workers=by_state,
            dlq_size=sum(stats.dlq_size for stats in every),
            finished_last_minute=sum(stats.finished_last_minute for stats in every),
            throughput_per_second=sum(stats.throughput_per_second for stats in every),
            open_breakers=sorted({name for stats in every for name in stats.open_breakers}),
        )

    # --- outbox ------------------------------------------------------------------------
    # Each shard records the events of its own tasks (a workflow lives on one shard, so
    # workflow.finished is decided there); ids gain the shard's index, so a settle goes
    # back to the shard that leased the event.

    async def outbox_subscribe(self, events: frozenset[str]) -> None:
        check_events(events)
        await asyncio.gather(*(shard.outbox_subscribe(events) for shard in self.shards))

    async def outbox_claim(self, params: OutboxClaimParams) -> list[OutboxEvent]:
        async def take(shard: int, limit: int) -> list[OutboxEvent]:
            events = await self.shards[shard].outbox_claim(replace(params, limit=limit)) if limit else []
            return [replace(e, id=f"{shard}-{e.id}") for e in events]

        got = await self._spread(params.limit, take, len)
        return sorted((e for _, events in got for e in events), key=lambda e: (e.at, e.id))

    async def outbox_settle(self, settles: Sequence[OutboxSettle]) -> None:
        by_shard: dict[int, list[OutboxSettle]] = {}
        for settle in settles:
            shard, _, local = settle.id.partition("-")
            if not shard.isdigit() or int(shard) >= len(self.shards) or not local:
                raise InvalidInput(f"not an outbox event id of this ring: {settle.id!r}")
            by_shard.setdefault(int(shard), []).append(replace(settle, id=local))
        await asyncio.gather(*(self.shards[i].outbox_settle(part) for i, part in by_shard.items()))

    async def outbox_size(self) -> int:
        return sum(await asyncio.gather(*(shard.outbox_size() for shard in self.shards)))

    # --- metric totals -------------------------------------------------------------------

    async def metrics_add(self, deltas: Mapping[str, float]) -> None:
        """The whole delta to the first shard that takes it: totals are read as the sum
        over every shard, so where a delta lands does not matter, and one shard down
        does not hold the workers' figures back."""
        if not deltas:
            return
        failure: BackendUnavailable | None = None
        for shard in self.shards:
            try:
                return await shard.metrics_add(deltas)
            except BackendUnavailable as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def metrics_read(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for part in await asyncio.gather(*(shard.metrics_read() for shard in self.shards)):
            for key, value in part.items():
                totals[key] = totals.get(key, 0.0) + value
        return totals

    # --- flow control --------------------------------------------------------------------

    async def queue_update(self, update: QueueUpdate) -> FlowControl:
        """Apply to shard 0 (which validates it), then to every other shard at once."""
        control = await self.shards[0].queue_update(update)
        await asyncio.gather(*(shard.queue_update(update) for shard in self.shards[1:]))
        return control

    async def queue_bound_set(self, queue: str, max_length: int | None) -> None:
        """On every shard, like the other settings (shard 0 validates it first)."""
        await self.shards[0].queue_bound_set(queue, max_length)
        await asyncio.gather(*(shard.queue_bound_set(queue, max_length) for shard in self.shards[1:]))

    async def queue_bounds(self) -> dict[str, int]:
        """Shard 0's bounds, filled in from the others for a queue it lacks (a set that
        failed half way)."""
        merged: dict[str, int] = {}
        for bounds in await asyncio.gather(*(shard.queue_bounds() for shard in self.shards)):
            for queue, bound in bounds.items():
                merged.setdefault(queue, bound)
        return merged

    async def flow_list(self) -> list[FlowControl]:
        """One control per key: the settings are alike on every shard; the live state
        shown is the most tripped shard's (an open breaker anywhere shows as open)."""
        lists = await asyncio.gather(*(shard.flow_list() for shard in self.shards))
        rank = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
        merged: dict[tuple[str, str], FlowControl] = {}
        for controls in lists:
            for control in controls:
                seen = merged.get(control.key)
                if seen is None or rank[control.breaker] > rank[seen.breaker]:
                    merged[control.key] = control
        return [merged[key] for key in sorted(merged)]

    async def task_ahead(self, task_id: str) -> int:
        """Pending tasks ahead of it on its own shard (claims take from every shard)."""
        return await self._on_owner(task_id, lambda shard: shard.task_ahead(task_id))

    # --- workers -------------------------------------------------------------------------

    def _home(self, worker_id: str) -> Backend:
        return self.shards[self.ring.shard_of(worker_key(worker_id))]

    async def worker_register(self, info: WorkerInfo) -> None:
        await self._home(info.id).worker_register(info)

    async def worker_heartbeat(self, params: HeartbeatParams) -> list[str]:
        """Refresh the worker on its home shard and each lease on its task's shard; a
        lease this instance never saw is tried on every shard (lost if lost on all)."""
        home = self.ring.shard_of(worker_key(params.worker_id))
        calls = dict(self._fan_out(params.leases, lambda lease: lease.task_id))
        calls.setdefault(home, [])
        shards = list(calls)
        lost_lists = await asyncio.gather(
            *(
                self.shards[s].worker_heartbeat(replace(params, leases=[params.leases[p] for p in calls[s]]))
                for s in shards
            )
        )
        # a lease tried on several shards is lost only if every one of them reports it lost
        # (all leases of one task id go to the same shards, so counting by id is exact)
        lost: dict[str, int] = {}
        for shard, ids in zip(shards, lost_lists, strict=True):
            reported = Counter(ids)
            for task_id in {params.leases[p].task_id for p in calls[shard]}:
                lost[task_id] = min(lost.get(task_id, reported[task_id]), reported[task_id])
        return [task_id for task_id, n in lost.items() for _ in range(n)]

    async def worker_deregister(self, worker_id: str) -> None:
        """On every shard, so a row left on a former home shard reads offline too."""
        await asyncio.gather(*(shard.worker_deregister(worker_id) for shard in self.shards))

    async def worker_list(self) -> list[WorkerInfo]:
        """Every shard's workers; a worker listed twice (its home moved) shows its newest row."""
        lists = await asyncio.gather(*(shard.worker_list() for shard in self.shards))
        newest: dict[str, WorkerInfo] = {}
        for workers in lists:
            for worker in workers:
                seen = newest.get(worker.id)
                if seen is None or worker.last_heartbeat_at > seen.last_heartbeat_at:
                    newest[worker.id] = worker
        return [newest[worker_id] for worker_id in sorted(newest)]


def _shares(total: int, shards: Sequence[int]) -> list[tuple[int, int]]:
    """``total`` split as evenly as can be over ``shards``, the first ones taking the rest."""
    if not shards:
        return []
    base, extra = divmod(max(0, total), len(shards))
    return [(shard, base + (1 if i < extra else 0)) for i, shard in enumerate(shards)]


def _add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {key: a.get(key, 0) + b.get(key, 0) for key in a.keys() | b.keys()}


def _merge_queues(lists: Sequence[Sequence[QueueInfo]]) -> list[QueueInfo]:
    """One ``QueueInfo`` per name: counts and bands added up, paused if paused anywhere."""
    merged: dict[str, QueueInfo] = {}
    for infos in lists:
        for info in infos:
            seen = merged.get(info.name)
            if seen is None:
                merged[info.name] = info.model_copy(deep=True)
                continue
            seen.counts = _add(seen.counts, info.counts)
            seen.pending_by_band = _add(seen.pending_by_band, info.pending_by_band)
            seen.paused = seen.paused or info.paused
            seen.max_length = seen.max_length if seen.max_length is not None else info.max_length
    return [merged[name] for name in sorted(merged)]


__all__ = ["PREFIX", "ShardedBackend", "partition_key", "piece_urls", "shard_identity"]
