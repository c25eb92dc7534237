"""Claiming: order, limits, queues, tags, lease fields, and scheduled tasks falling due."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from conveyor.backends import make_backend
from conveyor.backends.base import Backend, ClaimParams, ReapParams
from conveyor.states import State

from .helpers import claim, claim_one, enqueue, new_task, single_store_only, submit


async def test_claim_takes_higher_priority_first(backend: Backend) -> None:
    low, high, mid = new_task(priority=1), new_task(priority=10), new_task(priority=5)
    await enqueue(backend, low, high, mid)
    assert [c.id for c in await claim(backend, 10)] == [high.id, mid.id, low.id]


async def test_claim_is_fifo_within_a_priority_across_many_tasks(backend: Backend) -> None:
    single_store_only(backend.url, "claim order holds within each shard, not across shards")
    tasks = [new_task(priority=5 if i % 3 else 8) for i in range(60)]
    for start in range(0, 60, 20):  # several batches, ids keep increasing
        await enqueue(backend, *tasks[start : start + 20])
    got: list[str] = []
    while batch := await claim(backend, 7):
        got.extend(c.id for c in batch)
    expected = [t.id for t in tasks if t.priority == 8] + [t.id for t in tasks if t.priority == 5]
    assert got == expected


async def test_claim_orders_by_run_at_before_id_within_a_priority(backend: Backend) -> None:
    now = time.time()
    older_id = new_task(run_at=now - 5, created_at=now)
    newer_id_earlier_run = new_task(run_at=now - 50, created_at=now)
    await enqueue(backend, older_id, newer_id_earlier_run)
    assert [c.id for c in await claim(backend, 2)] == [newer_id_earlier_run.id, older_id.id]


async def test_claim_respects_limit(backend: Backend) -> None:
    await enqueue(backend, *(new_task() for _ in range(5)))
    assert len(await claim(backend, 3)) == 3
    assert len(await claim(backend, 3)) == 2
    assert await claim(backend, 3) == []


async def test_claim_returns_nothing_when_no_task_is_ready(backend: Backend) -> None:
    result = await backend.task_claim(ClaimParams(worker_id="w1", limit=5, lease_seconds=30))
    assert result.tasks == [] and result.next_due is None


async def test_claim_takes_only_the_queues_asked_for(backend: Backend) -> None:
    a, b, c = new_task(queue="a"), new_task(queue="b", priority=10), new_task(queue="c")
    await enqueue(backend, a, b, c)
    assert {t.id for t in await claim(backend, 10, queues=("a", "c"))} == {a.id, c.id}
    assert (await backend.task_get(b.id)).state is State.PENDING


async def test_claim_orders_by_priority_across_the_queues_asked_for(backend: Backend) -> None:
    a1, b1, a2 = new_task(queue="a", priority=3), new_task(queue="b", priority=9), new_task(queue="a", priority=6)
    await enqueue(backend, a1, b1, a2)
    assert [t.id for t in await claim(backend, 10, queues=("a", "b"))] == [b1.id, a2.id, a1.id]


async def test_claim_without_queues_takes_from_every_queue(backend: Backend) -> None:
    tasks = [new_task(queue=q) for q in ("a", "b", "c")]
    await enqueue(backend, *tasks)
    assert {t.id for t in await claim(backend, 10)} == {t.id for t in tasks}


async def test_claim_takes_only_tasks_whose_requires_are_a_subset_of_worker_tags(backend: Backend) -> None:
    plain = new_task()
    gpu = new_task(requires=["gpu"], priority=9)
    gpu_big = new_task(requires=["gpu", "big-mem"], priority=9)
    await enqueue(backend, plain, gpu, gpu_big)
    assert [t.id for t in await claim(backend, 10, tags=frozenset({"gpu", "ssd"}))] == [gpu.id, plain.id]
    assert (await backend.task_get(gpu_big.id)).state is State.PENDING
    assert await claim(backend, 10) == []
    got = await claim(backend, 10, tags=frozenset({"gpu", "big-mem"}))
    assert [t.id for t in got] == [gpu_big.id]


async def test_task_needing_other_tags_keeps_its_place_in_line(backend: Backend) -> None:
    gpu_first, plain, gpu_second = new_task(requires=["gpu"]), new_task(), new_task(requires=["gpu"])
    await enqueue(backend, gpu_first, plain, gpu_second)
    assert [t.id for t in await claim(backend, 1)] == [plain.id]
    assert [t.id for t in await claim(backend, 5, tags=frozenset({"gpu"}))] == [gpu_first.id, gpu_second.id]


async def test_claim_sets_attempts_worker_started_at_and_lease(backend: Backend) -> None:
    t = new_task(name="n.x", args={"a": [1]}, queue="q", priority=7, max_retries=4, timeout=9.0, labels=["l"])
    await enqueue(backend, t)
    now = time.time()
    claimed = await claim_one(backend, worker_id="worker-7", lease_seconds=15, now=now)
    assert (claimed.id, claimed.name, claimed.args, claimed.queue) == (t.id, "n.x", {"a": [1]}, "q")
    assert (claimed.priority, claimed.max_retries, claimed.timeout, claimed.labels) == (7, 4, 9.0, ["l"])
    assert claimed.attempts == 1
    assert claimed.lease_token
    assert claimed.lease_expires_at == pytest.approx(now + 15, abs=1e-3)
    stored = await backend.task_get(t.id)
    assert (stored.state, stored.attempts, stored.worker_id) == (State.RUNNING, 1, "worker-7")
    assert stored.started_at is not None and stored.started_at.timestamp() == pytest.approx(now, abs=1e-3)
    assert stored.lease_expires_at is not None
    assert stored.lease_expires_at.timestamp() == pytest.approx(now + 15, abs=1e-3)
    assert stored.history[-1].transition == "claim" and stored.history[-1].worker_id == "worker-7"


async def test_each_claim_gets_a_fresh_lease_token_and_counts_an_attempt(backend: Backend) -> None:
    t = new_task()
    await enqueue(backend, t)
    now = time.time()
    tokens = []
    for attempt in (1, 2, 3):
        claimed = await claim_one(backend, lease_seconds=1, now=now)
        assert claimed.attempts == attempt
        tokens.append(claimed.lease_token)
        now += 5
        assert await backend.task_reap_expired(ReapParams(now=now)) == [t.id]
    assert len(set(tokens)) == 3


async def test_scheduled_task_is_not_claimable_before_run_at(backend: Backend) -> None:
    t = new_task(delay=60)
    await enqueue(backend, t)
    result = await backend.task_claim(ClaimParams(worker_id="w1", limit=5, lease_seconds=30))
    assert result.tasks == []
    assert result.next_due == pytest.approx(t.run_at, abs=1e-3)
    assert (await backend.task_get(t.id)).state is State.SCHEDULED


async def test_scheduled_task_is_promoted_and_claimed_when_due(backend: Backend) -> None:
    t = new_task(delay=60)
    await enqueue(backend, t)
    result = await backend.task_claim(ClaimParams(worker_id="w1", limit=5, lease_seconds=30, now=t.run_at + 1))
    assert [c.id for c in result.tasks] == [t.id]
    history = (await backend.task_get(t.id)).history
    assert [(h.transition, h.state) for h in history[-2:]] == [("due", State.PENDING), ("claim", State.RUNNING)]


async def test_due_task_is_promoted_even_when_the_claim_has_no_room_for_it(backend: Backend) -> None:
    t = new_task(delay=60)
    await enqueue(backend, t)
    await backend.task_claim(ClaimParams(worker_id="w1", limit=0, lease_seconds=30, now=t.run_at + 1))
    assert (await backend.task_get(t.id)).state is State.PENDING


async def test_claim_reports_the_earliest_next_due_in_the_queues_asked_for(backend: Backend) -> None:
    soon, later, elsewhere = new_task(delay=30), new_task(delay=90), new_task(delay=5, queue="other")
    await enqueue(backend, later, soon, elsewhere)
    result = await backend.task_claim(ClaimParams(worker_id="w1", limit=1, lease_seconds=30, queues=("default",)))
    assert result.next_due == pytest.approx(soon.run_at, abs=1e-3)
    everywhere = await backend.task_claim(ClaimParams(worker_id="w1", limit=1, lease_seconds=30))
    assert everywhere.next_due == pytest.approx(elsewhere.run_at, abs=1e-3)


async def test_ready_scheduled_task_is_ordered_with_pending_ones(backend: Backend) -> None:
    scheduled = new_task(delay=10, priority=9)
    pending = new_task(priority=5)
    await enqueue(backend, pending, scheduled)
    got = await claim(backend, 5, now=scheduled.run_at + 1)
    assert [c.id for c in got] == [scheduled.id, pending.id]


async def test_claimed_task_is_not_claimed_again(backend: Backend) -> None:
    await submit(backend)
    await claim_one(backend)
    assert await claim(backend, 10, worker_id="w2") == []


def _claim_in_thread(url: str, worker: str, found: dict[str, list[str]]) -> None:
    async def run() -> None:
        b = make_backend(url)
        await b.open()
        try:
            while batch := await claim(b, 3, worker_id=worker):
                found[worker].extend(c.id for c in batch)
        finally:
            await b.close()

    asyncio.run(run())


async def test_concurrent_claimers_never_get_the_same_task(backend: Backend) -> None:
    tasks = [new_task() for _ in range(120)]
    await enqueue(backend, *tasks)
    found: dict[str, list[str]] = {f"w{i}": [] for i in range(4)}
    threads = [threading.Thread(target=_claim_in_thread, args=(backend.url, w, found)) for w in found]
    for th in threads:
        th.start()
    for th in threads:
        await asyncio.to_thread(th.join)
    every = [i for ids in found.values() for i in ids]
    assert sorted(every) == sorted(t.id for t in tasks)
