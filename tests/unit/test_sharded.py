"""The sharded engine: URL grammar, routing, claims across shards, finding tasks anywhere.

Runs on every ring ``tests/contract/helpers.engine_urls()`` builds (memory and SQLite
pieces always, PostgreSQL and Redis pieces when their servers answer). The contract
suite checks the rest of the contract on the same rings.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import rule, run_state_machine_as_test

from conveyor.backends import make_backend
from conveyor.backends.base import (
    Backend,
    CancelParams,
    ClaimParams,
    HeartbeatParams,
    Lease,
    ListParams,
    ReleaseParams,
    WaitParams,
)
from conveyor.backends.ring import HashRing
from conveyor.backends.sharded import ShardedBackend, piece_urls, shard_identity
from conveyor.errors import BackendUnavailable, InvalidInput, QueueFull, TaskExists, TaskNotFound
from conveyor.features.flow import QueueUpdate
from conveyor.ids import new_id
from conveyor.models import WorkerState
from conveyor.states import State
from tests.contract.helpers import (
    SHARDED_MEMORY_URL,
    all_tasks,
    claim,
    complete,
    engine_urls,
    enqueue,
    format_url,
    new_task,
    submit,
    unique_name,
    worker_info,
)
from tests.contract.test_state_machine import WORKER, ContractMachine, Expected, Held
from tests.services import drop_store

RINGS = {"shards-memory": SHARDED_MEMORY_URL} | {e: url for e, url in engine_urls().items() if e.startswith("shards-")}
SINGLE = {engine: url for engine, url in engine_urls().items() if not engine.startswith("shards-")}

Open = Callable[..., Awaitable[ShardedBackend]]


@pytest.fixture(params=[pytest.param(url, id=engine) for engine, url in RINGS.items()])
def ring_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return format_url(str(request.param), str(tmp_path))


@pytest.fixture
async def open_ring(ring_url: str) -> AsyncIterator[Open]:
    """Open instances on this test's ring (each a fresh process's view: nothing remembered)."""
    opened: list[Backend] = []

    async def _open(url: str | None = None) -> ShardedBackend:
        backend = make_backend(url or ring_url)
        assert isinstance(backend, ShardedBackend)
        await backend.open()
        opened.append(backend)
        return backend

    yield _open
    for backend in reversed(opened):
        await backend.close()
    drop_store(ring_url)


@pytest.fixture
async def ring(open_ring: Open) -> ShardedBackend:
    return await open_ring()


async def holder(ring: ShardedBackend, task_id: str) -> int:
    """The index of the one shard that stores ``task_id``."""
    found = []
    for i, shard in enumerate(ring.shards):
        try:
            await shard.task_get(task_id)
        except TaskNotFound:
            continue
        found.append(i)
    assert len(found) == 1, f"task {task_id} is on shards {found}"
    return found[0]


async def one_per_shard(ring: ShardedBackend, **overrides: Any) -> list[str]:
    """Submit plain tasks until every shard holds one; their ids, by shard."""
    by_shard: dict[int, str] = {}
    for _ in range(200):
        task_id = await submit(ring, **overrides)
        by_shard.setdefault(await holder(ring, task_id), task_id)
        if len(by_shard) == len(ring.shards):
            return [by_shard[i] for i in range(len(ring.shards))]
    raise AssertionError("200 tasks never reached every shard")


# --- the URL ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "pieces"),
    [
        ("shards+postgresql://h1/db,h2/db", ["postgresql://h1/db", "postgresql://h2/db"]),
        ("shards+redis://h1:6379/0,h2:6379/0", ["redis://h1:6379/0", "redis://h2:6379/0"]),
        ("shards+sqlite:///a.db,/b.db", ["sqlite:///a.db", "sqlite:///b.db"]),
        ("shards+sqlite:////abs/a.db,//abs/b.db", ["sqlite:////abs/a.db", "sqlite:////abs/b.db"]),
        ("shards+memory://a,b,c", ["memory://a", "memory://b", "memory://c"]),
        (
            "shards+postgresql://u:p@h1/db?schema=a,h1/db?schema=b",
            ["postgresql://u:p@h1/db?schema=a", "postgresql://h1/db?schema=b"],
        ),
        ("shards+redis://h1/0?prefix=a%2Cb,h2/0", ["redis://h1/0?prefix=a%2Cb", "redis://h2/0"]),
        ("shards+memory://only", ["memory://only"]),
    ],
)
def test_each_piece_becomes_an_engine_url_with_its_own_query(url: str, pieces: list[str]) -> None:
    assert piece_urls(url) == pieces


@pytest.mark.parametrize(
    "url",
    [
        "shards+memory://",
        "shards+memory://a,,b",
        "shards+memory://a,",
        "shards+shards+memory://a,b",
        "shards+://a,b",
        "shards+memory",
        "shards+memory://a,a",
        "shards+nosuchengine://a,b",
    ],
)
def test_a_malformed_sharded_url_is_refused(url: str) -> None:
    with pytest.raises(InvalidInput):
        make_backend(url)


def test_a_shard_is_placed_by_its_url_without_credentials() -> None:
    assert shard_identity("postgresql://u:secret@h1:5432/db?schema=x") == "h1:5432/db?schema=x"
    assert shard_identity("sqlite:////var/q/a.db") == "//var/q/a.db"  # the piece as written
    assert shard_identity("memory://a") == "a"


def test_make_backend_builds_one_engine_per_piece(tmp_path: Path) -> None:
    backend = make_backend(f"shards+sqlite:///{tmp_path}/a.db,/{tmp_path}/b.db")
    assert isinstance(backend, ShardedBackend)
    assert [shard.url for shard in backend.shards] == [f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db"]


# --- routing -----------------------------------------------------------------------------


async def test_plain_tasks_spread_over_every_shard(ring: ShardedBackend) -> None:
    done = await enqueue(ring, *(new_task() for _ in range(60)))
    shards = [await holder(ring, d.id) for d in done]
    assert set(shards) == set(range(len(ring.shards)))


async def test_a_workflow_lands_on_one_shard(ring: ShardedBackend, open_ring: Open) -> None:
    wf = new_id()
    root = new_task(workflow_id=wf, workflow_key="root")
    kids = [new_task(workflow_id=wf, workflow_key=f"k{i}", depends_on=[root.id]) for i in range(30)]
    loose = [new_task(workflow_id=wf, workflow_key=f"l{i}") for i in range(10)]  # no edges, same workflow
    await enqueue(ring, root, *kids, *loose)
    assert len({await holder(ring, t.id) for t in [root, *kids, *loose]}) == 1
    fresh = await open_ring()
    assert [t.id for t in await fresh.workflow_get(wf)] == sorted(t.id for t in [root, *kids, *loose])


async def test_tasks_linked_in_one_batch_stay_together(ring: ShardedBackend) -> None:
    for _ in range(5):
        a, b = new_task(queue="a"), new_task(queue="b")
        child = new_task(depends_on=[a.id, b.id])
        await enqueue(ring, child, a, b)
        assert len({await holder(ring, t.id) for t in (a, b, child)}) == 1


async def test_a_dependent_task_goes_to_its_stored_parents_shard(ring: ShardedBackend, open_ring: Open) -> None:
    parents = await one_per_shard(ring)
    fresh = await open_ring()  # knows nothing of where the parents went
    for shard, parent in enumerate(parents):
        child = await submit(fresh, depends_on=[parent])
        assert await holder(ring, child) == shard


async def test_parents_on_different_shards_are_refused_and_nothing_is_stored(ring: ShardedBackend) -> None:
    parents = await one_per_shard(ring)
    before = len(await all_tasks(ring))
    with pytest.raises(InvalidInput):
        await enqueue(ring, new_task(), new_task(depends_on=parents[:2]))
    assert len(await all_tasks(ring)) == before


async def test_an_unknown_parent_is_refused_and_nothing_is_stored(ring: ShardedBackend) -> None:
    with pytest.raises(TaskNotFound):
        await enqueue(ring, *(new_task() for _ in range(10)), new_task(depends_on=[new_id()]))
    assert await all_tasks(ring) == []


async def test_an_idempotency_key_holds_ring_wide_from_any_instance(ring: ShardedBackend, open_ring: Open) -> None:
    others = [await open_ring(), await open_ring()]
    for queue in ("a", "b", "c", "d"):
        first = await enqueue(ring, new_task(queue=queue, idempotency_key="order-7"))
        for backend in others:
            (again,) = await enqueue(backend, new_task(queue=queue, idempotency_key="order-7"))
            assert (again.id, again.created) == (first[0].id, False)
    assert len(await all_tasks(ring)) == 4


async def test_max_length_is_checked_ring_wide(ring: ShardedBackend) -> None:
    for _ in range(16):
        await enqueue(ring, new_task(queue="q"), q=16)
    assert len({await holder(ring, t.id) for t in await all_tasks(ring)}) > 1  # 1 in 30,000 runs: all on one
    with pytest.raises(QueueFull):
        await enqueue(ring, new_task(queue="q"), q=16)
    (done,) = await enqueue(ring, new_task(queue="q"), q=17)
    assert done.created


async def test_a_batch_over_the_ring_wide_bound_stores_nothing(ring: ShardedBackend) -> None:
    await enqueue(ring, *(new_task(queue="q") for _ in range(3)), q=10)
    with pytest.raises(QueueFull):
        await enqueue(ring, *(new_task(queue="q") for _ in range(8)), new_task(queue="free"), q=10)
    assert len(await all_tasks(ring)) == 3
    done = await enqueue(ring, *(new_task(queue="q") for _ in range(7)), q=10)
    assert all(d.created for d in done)


async def test_a_batch_spanning_shards_is_atomic_per_shard(ring: ShardedBackend) -> None:
    existing = (await one_per_shard(ring))[0]  # on shard 0, where its id routes
    fresh = [new_task() for _ in range(30)]
    with pytest.raises(TaskExists) as refused:
        await enqueue(ring, *fresh, new_task(id=existing))
    kept = {t.id for t in fresh if ring.ring.shard_of(t.id) != 0}
    assert kept and set(refused.value.details["stored_on_other_shards"]) == kept
    stored = {t.id for t in await all_tasks(ring)}
    assert kept <= stored and not ({t.id for t in fresh} - kept) & stored


# --- claims ------------------------------------------------------------------------------


async def test_claims_draw_from_every_shard(ring: ShardedBackend) -> None:
    for _ in range(3):
        await one_per_shard(ring)
    got = await claim(ring, 2 * len(ring.shards))
    assert {await holder(ring, t.id) for t in got} == set(range(len(ring.shards)))


async def test_one_at_a_time_claims_take_turns_over_the_shards(ring: ShardedBackend) -> None:
    for _ in range(2):
        await one_per_shard(ring)
    turns = [await holder(ring, (await claim(ring, 1))[0].id) for _ in ring.shards]
    assert sorted(turns) == list(range(len(ring.shards)))


async def test_a_claim_fills_its_limit_from_one_shard_when_the_others_are_empty(ring: ShardedBackend) -> None:
    wf = new_id()  # a workflow: every task on one shard
    await enqueue(ring, *(new_task(workflow_id=wf, workflow_key=f"n{i}") for i in range(12)))
    assert len(await claim(ring, 10)) == 10
    assert len(await claim(ring, 10)) == 2


async def test_claimed_tasks_come_back_in_claim_order(ring: ShardedBackend) -> None:
    await enqueue(ring, *(new_task(priority=p) for p in (1, 9, 5, 3, 7, 0, 10, 2)))
    got = await claim(ring, 20)
    assert [t.priority for t in got] == [10, 9, 7, 5, 3, 2, 1, 0]


async def test_next_due_is_the_earliest_over_every_shard(ring: ShardedBackend) -> None:
    tasks = [new_task(delay=d) for d in (90, 30, 60, 45, 120)]
    await enqueue(ring, *tasks)
    result = await ring.task_claim(ClaimParams("w1", 5, 30.0))
    assert result.tasks == [] and result.next_due == pytest.approx(min(t.run_at for t in tasks), abs=1e-3)


async def test_task_wait_wakes_for_work_on_any_shard(ring: ShardedBackend) -> None:
    for shard in ring.shards:
        started = time.monotonic()
        waiter = asyncio.create_task(ring.task_wait(WaitParams(timeout=10)))
        await asyncio.sleep(0.05)
        await enqueue(shard, new_task())
        await asyncio.wait_for(waiter, 5)
        assert time.monotonic() - started < 1.0


async def test_a_shard_that_is_down_leaves_the_others_claiming(tmp_path: Path) -> None:
    ring = make_backend(f"shards+sqlite:///{tmp_path}/a.db,/{tmp_path}/b.db")
    assert isinstance(ring, ShardedBackend)
    await ring.open()
    try:
        ids = {d.id for d in await enqueue(ring, *(new_task() for _ in range(40)))}
        await ring.shards[1].close()  # operations on it now raise BackendUnavailable
        up = {i for i in ids if ring.ring.shard_of(i) == 0}
        assert {t.id for t in await claim(ring, 100)} == up
        await asyncio.wait_for(ring.task_wait(WaitParams(timeout=0.1)), 2)
        await ring.shards[0].close()
        with pytest.raises(BackendUnavailable):
            await claim(ring, 100)
        with pytest.raises(BackendUnavailable):
            await ring.task_wait(WaitParams(timeout=0.1))
    finally:
        await ring.close()


async def test_metric_totals_go_to_the_next_shard_when_the_first_is_down(tmp_path: Path) -> None:
    """Workers' figures are not held back by one shard down, and a read sums what every
    shard that answers holds."""
    ring = make_backend(f"shards+sqlite:///{tmp_path}/a.db,/{tmp_path}/b.db")
    assert isinstance(ring, ShardedBackend)
    await ring.open()
    try:
        await ring.metrics_add({"attempts": 2.0})
        assert await ring.shards[0].metrics_read() == {"attempts": 2.0}  # the first shard takes it
        await ring.shards[0].close()
        await ring.metrics_add({"attempts": 3.0, "retries": 1.0})
        assert await ring.shards[1].metrics_read() == {"attempts": 3.0, "retries": 1.0}
        await ring.shards[1].close()
        with pytest.raises(BackendUnavailable):
            await ring.metrics_add({"attempts": 1.0})
    finally:
        await ring.close()
    again = make_backend(f"shards+sqlite:///{tmp_path}/a.db,/{tmp_path}/b.db")
    await again.open()
    try:
        assert await again.metrics_read() == {"attempts": 5.0, "retries": 1.0}  # nothing lost, nothing twice
    finally:
        await again.close()


# --- one task, found anywhere --------------------------------------------------------------


async def test_get_and_cancel_find_a_task_on_any_shard(ring: ShardedBackend, open_ring: Open) -> None:
    wf = new_id()
    by_workflow = new_task(workflow_id=wf, workflow_key="n")  # placed by its workflow, not its id
    keyed = new_task(idempotency_key="k")  # placed by its key
    ids = [*await one_per_shard(ring), by_workflow.id, keyed.id]
    await enqueue(ring, by_workflow, keyed)
    fresh = await open_ring()
    for task_id in ids:
        assert (await fresh.task_get(task_id)).id == task_id
    for task_id in ids:
        assert (await (await open_ring()).task_cancel(CancelParams(task_id))).state is State.CANCELLED
    with pytest.raises(TaskNotFound):
        await fresh.task_get(new_id())
    with pytest.raises(TaskNotFound):
        await fresh.task_cancel(CancelParams(new_id()))


async def test_outcomes_leases_and_heartbeats_work_from_an_instance_that_did_not_claim(
    ring: ShardedBackend, open_ring: Open
) -> None:
    await one_per_shard(ring)
    await one_per_shard(ring)
    await ring.worker_register(worker_info("w1"))
    claimed = await claim(ring, 2 * len(ring.shards), worker_id="w1")
    fresh = await open_ring()
    leases = [Lease(t.id, t.lease_token) for t in claimed] + [Lease(new_id(), "nobody")]
    beat = HeartbeatParams("w1", WorkerState.BUSY, leases, lease_seconds=60)
    assert await fresh.worker_heartbeat(beat) == [leases[-1].task_id]
    half = len(claimed) // 2
    assert await fresh.task_finish_many([complete(t, "ok") for t in claimed[:half]]) == [True] * half
    assert await fresh.task_finish_many([complete(claimed[0], "again")]) == [False]
    released = await (await open_ring()).task_release(ReleaseParams("w1", leases[half:]))
    assert released == len(claimed) - half
    states = {t.id: t.state for t in await all_tasks(ring)}
    assert [states[t.id] for t in claimed] == [State.SUCCEEDED] * half + [State.PENDING] * (len(claimed) - half)


# --- admin and workers -----------------------------------------------------------------------


async def test_listing_pages_merge_every_shard_newest_first(ring: ShardedBackend) -> None:
    tasks = [new_task() for _ in range(17)]
    await enqueue(ring, *tasks)
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = await ring.task_list(ListParams(limit=4, cursor=cursor))
        seen.extend(t.id for t in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [t.id for t in reversed(tasks)]


@pytest.mark.parametrize("template", [pytest.param(url, id=engine) for engine, url in SINGLE.items()])
async def test_every_engine_pages_by_the_last_id_shown(template: str, tmp_path: Path) -> None:
    """The ring passes one cursor to every shard: each engine's cursor must be the last id."""
    url = format_url(template, str(tmp_path))
    backend = make_backend(url)
    await backend.open()
    try:
        await enqueue(backend, *(new_task() for _ in range(5)))
        page = await backend.task_list(ListParams(limit=2))
        assert page.next_cursor == page.items[-1].id
        shifted = await backend.task_list(ListParams(limit=2, cursor=page.items[0].id))
        assert [t.id for t in shifted.items] == [page.items[1].id, (await all_tasks(backend))[2].id]
    finally:
        await backend.close()
        drop_store(url)


async def test_stats_and_queue_list_add_up_every_shard(ring: ShardedBackend) -> None:
    await enqueue(ring, *(new_task(queue="a") for _ in range(9)), *(new_task(queue="b", delay=600) for _ in range(4)))
    await claim(ring, 3, queues=("a",))
    stats = await ring.stats()
    assert {k: v for k, v in stats.counts.items() if v} == {"pending": 6, "running": 3, "scheduled": 4}
    queues = {q.name: q for q in await ring.queue_list()}
    assert {k: v for k, v in queues["a"].counts.items() if v} == {"pending": 6, "running": 3}
    assert queues["b"].counts["scheduled"] == 4


async def test_a_worker_lives_on_its_home_shard_and_is_listed_once(ring: ShardedBackend, open_ring: Open) -> None:
    for i in range(6):
        await ring.worker_register(worker_info(f"w{i}"))
    per_shard = [len(await shard.worker_list()) for shard in ring.shards]
    assert sum(per_shard) == 6
    fresh = await open_ring()
    await fresh.worker_deregister("w0")
    listed = {w.id: w.state for w in await fresh.worker_list()}
    assert listed == {"w0": WorkerState.OFFLINE} | {f"w{i}": WorkerState.IDLE for i in range(1, 6)}
    assert (await fresh.stats()).workers["idle"] == 5


async def test_a_queue_update_reaches_every_shard(ring: ShardedBackend) -> None:
    await one_per_shard(ring, queue="slow")
    await ring.queue_update(QueueUpdate("slow", paused=True))
    for shard in ring.shards:
        assert [(c.name, c.paused) for c in await shard.flow_list()] == [("slow", True)]
    assert await claim(ring, 10) == []
    assert [q.name for q in await ring.queue_list() if q.paused] == ["slow"]
    await ring.queue_update(QueueUpdate("slow", paused=False))
    assert len(await claim(ring, 500)) == len(await all_tasks(ring))


async def test_migrate_reports_each_shard_and_gives_a_new_one_the_flow_controls(tmp_path: Path) -> None:
    backend = make_backend(f"shards+sqlite:///{tmp_path}/a.db,/{tmp_path}/b.db", auto_migrate=False)
    await backend.open()
    try:
        applied = await backend.migrate()
        assert applied and {name.split(":")[0] for name in applied} == {"shard 0", "shard 1"}
        assert await backend.migrate() == []
        await backend.queue_update(QueueUpdate("held", paused=True))
    finally:
        await backend.close()
    grown = make_backend(f"shards+sqlite:///{tmp_path}/a.db,/{tmp_path}/b.db,/{tmp_path}/c.db", auto_migrate=False)
    assert isinstance(grown, ShardedBackend)
    await grown.open()
    try:
        assert {name.split(":")[0] for name in await grown.migrate()} == {"shard 2"}
        assert [(c.name, c.paused) for c in await grown.shards[2].flow_list()] == [("held", True)]
    finally:
        await grown.close()


# --- growing the ring ---------------------------------------------------------------------


async def test_a_grown_ring_keeps_flow_controls_and_finds_claims_and_cancels_old_tasks() -> None:
    name = unique_name()
    small = make_backend(f"shards+memory://{name}-a,{name}-b")
    grown = make_backend(f"shards+memory://{name}-a,{name}-b,{name}-c")
    await small.open()
    await small.queue_update(QueueUpdate("held", paused=True))
    await grown.open()
    assert isinstance(grown, ShardedBackend)
    for shard in grown.shards:  # the new shard got the control when the grown ring opened
        assert [(c.name, c.paused) for c in await shard.flow_list()] == [("held", True)]
    wf = new_id()
    old = [new_task() for _ in range(20)] + [new_task(workflow_id=wf, workflow_key=f"n{i}") for i in range(3)]
    await enqueue(small, *old)
    for task in old[:5]:
        assert (await grown.task_cancel(CancelParams(task.id))).state is State.CANCELLED
    assert len(await grown.workflow_get(wf)) == 3
    claimed = await claim(grown, 100)
    assert len(claimed) == len(old) - 5
    assert await grown.task_finish_many([complete(t) for t in claimed]) == [True] * len(claimed)


# --- the contract's random walk, with the one ring-wide rule it cannot keep relaxed ----------


class RingMachine(ContractMachine):
    """The contract's state machine on a ring: a claim must take ``min(limit, ready)``
    ready tasks and hand them back in claim order, but which ones depends on the shards.

    Hypothesis replays a run to shrink it, so where tasks land must not change between
    replays: the ring gets fixed shard names and the tasks counted ids."""

    def __init__(self) -> None:
        super().__init__()
        assert isinstance(self.backend, ShardedBackend)
        self.backend.ring = HashRing([f"shard-{i}" for i in range(len(self.backend.shards))])
        self.counter = 0

    def enqueue_one(
        self,
        queue: str,
        priority: int,
        delay: float | None,
        requires: tuple[str, ...],
        max_retries: int,
        dep: int | None,
    ) -> None:
        depends_on = [self.pick(list(self.model), dep)] if dep is not None and self.model else []
        self.counter += 1
        task_id = f"00000000-0000-7000-8000-{self.counter:012x}"
        t = new_task(id=task_id, queue=queue, priority=priority, requires=list(requires), max_retries=max_retries)
        t.depends_on = depends_on
        if delay is not None:
            t.run_at = self.now + delay
        (done,) = self.run(enqueue(self.backend, t))
        self.model[t.id] = Expected(
            t.initial_state, 0, queue, priority, t.run_at, frozenset(requires), max_retries, tuple(depends_on)
        )
        self.settle()
        assert (done.id, done.created, done.state) == (t.id, True, self.model[t.id].state)

    @rule(limit=st.integers(1, 3), gpu=st.booleans(), lease=st.sampled_from([5.0, 30.0]))
    def claim(self, limit: int, gpu: bool, lease: float) -> None:
        for task_id in self.ids_in(State.SCHEDULED, State.RETRYING):
            if self.model[task_id].run_at <= self.now:
                self.move(task_id, "due")
        tags = frozenset({"gpu"}) if gpu else frozenset()
        ready = {i for i in self.ids_in(State.PENDING) if self.model[i].requires <= tags}
        params = ClaimParams(worker_id=WORKER, limit=limit, lease_seconds=lease, tags=tags, now=self.now)
        result = self.run(self.backend.task_claim(params))
        got = [c.id for c in result.tasks]
        assert set(got) <= ready and len(got) == len(set(got)) == min(limit, len(ready))
        assert got == sorted(got, key=lambda i: (-self.model[i].priority, self.model[i].run_at, i))
        for claimed in result.tasks:
            assert claimed.lease_token not in self.tokens_seen, "a lease token was reused"
            self.tokens_seen.add(claimed.lease_token)
            self.move(claimed.id, "claim")
            self.model[claimed.id].attempts += 1
            assert claimed.attempts == self.model[claimed.id].attempts
            self.held[claimed.id] = Held(claimed.lease_token, self.now + lease)
        delayed = [self.model[i].run_at for i in self.ids_in(State.SCHEDULED, State.RETRYING)]
        assert (result.next_due is None) == (not delayed)
        if delayed:
            assert result.next_due is not None and abs(result.next_due - min(delayed)) < 1e-3


@pytest.mark.timeout(900)
@pytest.mark.parametrize("template", [pytest.param(url, id=engine) for engine, url in RINGS.items()])
def test_random_operation_sequences_keep_the_contract_on_a_ring(template: str) -> None:
    machine = type("RingMachine", (RingMachine,), {"URL_TEMPLATE": template})
    checks = settings(
        max_examples=30, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    run_state_machine_as_test(machine, settings=checks)
