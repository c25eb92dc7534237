"""Submitting tasks: ids and states, atomic batches, idempotency keys, ``max_length``."""

from __future__ import annotations

import time

import pytest

from conveyor.backends.base import Backend
from conveyor.errors import QueueFull, TaskExists
from conveyor.priority import Band
from conveyor.retry import RetryPolicy
from conveyor.states import State

from .helpers import all_tasks, claim_one, complete, enqueue, new_task, single_store_only


async def test_enqueue_returns_ids_and_states_in_submit_order(backend: Backend) -> None:
    now_task, later_task = new_task(), new_task(delay=60)
    done = await enqueue(backend, now_task, later_task)
    assert [(d.id, d.state, d.created) for d in done] == [
        (now_task.id, State.PENDING, True),
        (later_task.id, State.SCHEDULED, True),
    ]


async def test_task_due_now_is_pending_and_future_run_at_is_scheduled(backend: Backend) -> None:
    ready, later = new_task(), new_task(delay=3600)
    await enqueue(backend, ready, later)
    assert (await backend.task_get(ready.id)).state is State.PENDING
    assert (await backend.task_get(later.id)).state is State.SCHEDULED


async def test_enqueued_task_reads_back_with_every_field(backend: Backend) -> None:
    policy = RetryPolicy(max_retries=7, base=0.5, factor=3.0, max=60.0, jitter=False)
    t = new_task(
        name="email.send",
        args={"to": "a@b.c", "nested": {"list": [1, 2.5, "x", None, True]}},
        queue="emails",
        priority=9,
        labels=["hotfix", "team-a"],
        requires=["gpu"],
        idempotency_key="order-42",
        max_retries=7,
        timeout=12.5,
        retry=policy,
    )
    await enqueue(backend, t)
    got = await backend.task_get(t.id)
    assert (got.id, got.name, got.args, got.queue) == (t.id, t.name, t.args, "emails")
    assert (got.priority, got.band, got.state) == (9, Band.HIGH, State.PENDING)
    assert (got.labels, got.requires, got.depends_on) == (["hotfix", "team-a"], ["gpu"], [])
    assert (got.idempotency_key, got.max_retries, got.timeout, got.retry) == ("order-42", 7, 12.5, policy)
    assert got.attempts == 0
    assert got.result is None and got.error is None and got.failure_reason is None
    assert got.worker_id is None and got.lease_expires_at is None
    assert got.started_at is None and got.finished_at is None
    assert got.run_at.timestamp() == pytest.approx(t.run_at, abs=1e-3)
    assert got.created_at.timestamp() == pytest.approx(t.created_at, abs=1e-3)
    assert got.updated_at.timestamp() >= t.created_at - 1e-3
    assert got.created_at.tzinfo is not None


async def test_returned_task_is_a_copy_of_the_stored_one(backend: Backend) -> None:
    t = new_task(args={"items": [1, 2]})
    await enqueue(backend, t)
    t.args["items"].append(3)
    first = await backend.task_get(t.id)
    first.args["items"].append(4)
    first.labels.append("changed")
    again = await backend.task_get(t.id)
    assert again.args == {"items": [1, 2]} and again.labels == []


async def test_batch_enqueue_stores_every_task(backend: Backend) -> None:
    batch = [new_task(queue=q) for q in ("a", "b", "a", "c")]
    done = await enqueue(backend, *batch)
    assert [d.id for d in done] == [t.id for t in batch]
    assert all(d.created for d in done)
    assert {t.id for t in await all_tasks(backend)} == {t.id for t in batch}


async def test_batch_over_max_length_raises_queue_full_and_stores_nothing(backend: Backend) -> None:
    await enqueue(backend, new_task(queue="q"), q=3)
    batch = [new_task(queue="other"), new_task(queue="q"), new_task(queue="q"), new_task(queue="q")]
    with pytest.raises(QueueFull):
        await enqueue(backend, *batch, q=3)
    assert len(await all_tasks(backend)) == 1
    assert await all_tasks(backend, queue="other") == []


async def test_batch_that_exactly_fills_the_queue_is_accepted(backend: Backend) -> None:
    done = await enqueue(backend, new_task(queue="q"), new_task(queue="q"), q=2)
    assert all(d.created for d in done)
    with pytest.raises(QueueFull):
        await enqueue(backend, new_task(queue="q"), q=2)


async def test_max_length_counts_only_unfinished_tasks(backend: Backend) -> None:
    await enqueue(backend, new_task(queue="q"), new_task(queue="q"), q=2)
    with pytest.raises(QueueFull):
        await enqueue(backend, new_task(queue="q"), q=2)
    claimed = await claim_one(backend, queues=("q",))
    assert await backend.task_finish_many([complete(claimed)]) == [True]
    (done,) = await enqueue(backend, new_task(queue="q"), q=2)
    assert done.created


async def test_max_length_counts_every_unfinished_state(backend: Backend) -> None:
    await enqueue(backend, new_task(queue="q", delay=3600), new_task(queue="q"), q=3)
    await claim_one(backend, queues=("q",))  # one running, one scheduled
    await enqueue(backend, new_task(queue="q"), q=3)  # one pending: 3 unfinished
    with pytest.raises(QueueFull):
        await enqueue(backend, new_task(queue="q"), q=3)


async def test_max_length_bounds_each_queue_separately(backend: Backend) -> None:
    await enqueue(backend, new_task(queue="a"), a=1)
    (done,) = await enqueue(backend, new_task(queue="b"), a=1)
    assert done.created
    await enqueue(backend, new_task(queue="b"))  # no bound given for b
    with pytest.raises(QueueFull):
        await enqueue(backend, new_task(queue="a"), a=1)


async def test_idempotency_key_returns_the_first_task_and_writes_nothing(backend: Backend) -> None:
    first = new_task(idempotency_key="k1", args={"v": 1})
    (a,) = await enqueue(backend, first)
    (b,) = await enqueue(backend, new_task(idempotency_key="k1", args={"v": 2}))
    assert (b.id, b.state, b.created) == (first.id, State.PENDING, False)
    assert a.created
    stored = await all_tasks(backend)
    assert [t.id for t in stored] == [first.id]
    assert stored[0].args == {"v": 1}


async def test_idempotency_key_repeat_reports_the_first_tasks_current_state(backend: Backend) -> None:
    first = new_task(idempotency_key="k1")
    await enqueue(backend, first)
    claimed = await claim_one(backend)
    await backend.task_finish_many([complete(claimed, result=1)])
    (again,) = await enqueue(backend, new_task(idempotency_key="k1"))
    assert (again.id, again.state, again.created) == (first.id, State.SUCCEEDED, False)


async def test_idempotency_key_is_independent_across_queues(backend: Backend) -> None:
    a, b = new_task(queue="a", idempotency_key="k"), new_task(queue="b", idempotency_key="k")
    done = await enqueue(backend, a, b)
    assert [(d.id, d.created) for d in done] == [(a.id, True), (b.id, True)]


async def test_idempotency_key_repeated_within_one_batch_creates_one_task(backend: Backend) -> None:
    first, dup, other_queue = (
        new_task(idempotency_key="k"),
        new_task(idempotency_key="k"),
        new_task(idempotency_key="k", queue="other"),
    )
    done = await enqueue(backend, first, dup, other_queue)
    assert [(d.id, d.created) for d in done] == [(first.id, True), (first.id, False), (other_queue.id, True)]
    assert {t.id for t in await all_tasks(backend)} == {first.id, other_queue.id}


async def test_idempotent_repeat_does_not_count_against_max_length(backend: Backend) -> None:
    first = new_task(queue="q", idempotency_key="k")
    await enqueue(backend, first, q=1)
    (again,) = await enqueue(backend, new_task(queue="q", idempotency_key="k"), q=1)
    assert (again.id, again.created) == (first.id, False)


async def test_queue_full_batch_does_not_claim_its_idempotency_keys(backend: Backend) -> None:
    await enqueue(backend, new_task(queue="q"), q=1)
    with pytest.raises(QueueFull):
        await enqueue(backend, new_task(queue="q", idempotency_key="k"), q=1)
    retry_elsewhere = new_task(queue="q", idempotency_key="k")
    (done,) = await enqueue(backend, retry_elsewhere)
    assert (done.id, done.created) == (retry_elsewhere.id, True)


async def test_enqueue_of_an_existing_id_raises_task_exists_and_stores_nothing(backend: Backend) -> None:
    single_store_only(backend.url, "a batch is atomic per shard, so another shard keeps its part")
    t = new_task()
    await enqueue(backend, t)
    fresh = new_task()
    with pytest.raises(TaskExists):
        await enqueue(backend, fresh, new_task(id=t.id))
    assert [x.id for x in await all_tasks(backend)] == [t.id]


async def test_created_at_and_run_at_keep_sub_second_precision(backend: Backend) -> None:
    base = time.time() - 10
    t = new_task(run_at=base + 0.123456, created_at=base)
    await enqueue(backend, t)
    got = await backend.task_get(t.id)
    assert got.run_at.timestamp() == pytest.approx(base + 0.123456, abs=1e-5)
