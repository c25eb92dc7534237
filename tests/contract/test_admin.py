"""Reading and steering: get, history, listings, the dead-letter queue, queues and stats."""

from __future__ import annotations

import time
from itertools import pairwise

import pytest

from conveyor.backends.base import PURGED_KEY, REPLAYED_KEY, Backend, CancelParams, ListParams, ReapParams, TaskFilter
from conveyor.errors import TaskNotFound
from conveyor.ids import new_id
from conveyor.states import TRANSITIONS, FailureReason, State

from .helpers import all_tasks, claim, claim_one, complete, enqueue, fail, new_task, retry, submit


async def _dead(backend: Backend, **overrides: object) -> str:
    """A task in the dead-letter queue (``failed``), alone in its own queue."""
    queue = str(overrides.pop("queue", "dlq-" + new_id()[-12:]))
    task_id = await submit(backend, queue=queue, **overrides)
    claimed = await claim_one(backend, queues=(queue,))
    await backend.task_finish_many([fail(claimed, FailureReason.PERMANENT_ERROR)])
    return task_id


async def test_get_of_an_unknown_task_raises_task_not_found(backend: Backend) -> None:
    with pytest.raises(TaskNotFound):
        await backend.task_get("0190f0e0-0000-7000-8000-000000000000")


async def test_history_records_every_transition_in_order(backend: Backend) -> None:
    t = new_task(delay=30, max_retries=5)
    await enqueue(backend, t)
    now = t.run_at + 1
    first = await claim_one(backend, worker_id="w1", lease_seconds=5, now=now)
    await backend.task_finish_many([retry(first, run_at=now + 10, worker_id="w1")])
    second = await claim_one(backend, worker_id="w2", lease_seconds=5, now=now + 11)
    await backend.task_reap_expired(ReapParams(now=now + 20))
    third = await claim_one(backend, worker_id="w3", now=now + 21)
    await backend.task_finish_many([complete(third, "ok", worker_id="w3")])
    assert second.lease_token != third.lease_token
    history = (await backend.task_get(t.id)).history
    assert [(h.transition, h.state) for h in history] == [
        ("enqueue", State.SCHEDULED),
        ("due", State.PENDING),
        ("claim", State.RUNNING),
        ("retry", State.RETRYING),
        ("due", State.PENDING),
        ("claim", State.RUNNING),
        ("lease_expired", State.PENDING),
        ("claim", State.RUNNING),
        ("complete", State.SUCCEEDED),
    ]
    assert [h.worker_id for h in history if h.transition in ("claim", "complete")] == ["w1", "w2", "w3", "w3"]
    for before, after in pairwise(history):
        sources, target = TRANSITIONS[after.transition]
        assert before.state in sources and after.state is target
    assert all(h.at.tzinfo is not None for h in history)


async def test_every_transition_moves_updated_at(backend: Backend) -> None:
    task_id = await submit(backend)
    created = await backend.task_get(task_id)
    claimed = await claim_one(backend, now=time.time() + 5)
    running = await backend.task_get(task_id)
    assert running.updated_at > created.updated_at
    await backend.task_finish_many([complete(claimed, finished_at=time.time() + 10)])
    assert (await backend.task_get(task_id)).updated_at > running.updated_at


async def test_replay_of_a_failed_task_resets_it_and_keeps_history(backend: Backend) -> None:
    task_id = await _dead(backend, max_retries=0)
    before = await backend.task_get(task_id)
    assert await backend.task_replay(TaskFilter(ids=[task_id])) == 1
    task = await backend.task_get(task_id)
    assert (task.state, task.attempts, task.error, task.failure_reason) == (State.PENDING, 0, None, None)
    assert (task.finished_at, task.started_at, task.result) == (None, None, None)
    assert abs(task.run_at.timestamp() - time.time()) < 5  # queued again as if submitted now
    assert task.history[: len(before.history)] == before.history
    assert (task.history[-1].transition, task.history[-1].state) == ("replay", State.PENDING)
    again = await claim_one(backend, queues=(task.queue,))
    assert (again.id, again.attempts) == (task_id, 1)


async def test_replay_touches_only_failed_tasks_matching_the_filter(backend: Backend) -> None:
    wanted = [await _dead(backend, queue="mail", name="mail.send") for _ in range(2)]
    other_name = await _dead(backend, queue="mail", name="mail.bounce")
    other_queue = await _dead(backend, queue="sms", name="mail.send")
    pending = await submit(backend, queue="mail", name="mail.send")
    assert await backend.task_replay(TaskFilter(queue="mail", name="mail.send")) == 2
    states = {tid: (await backend.task_get(tid)).state for tid in [*wanted, other_name, other_queue, pending]}
    assert states == {
        wanted[0]: State.PENDING,
        wanted[1]: State.PENDING,
        other_name: State.FAILED,
        other_queue: State.FAILED,
        pending: State.PENDING,
    }
    assert len((await backend.task_get(pending)).history) == 1


async def test_replay_and_purge_ignore_a_state_filter_other_than_failed(backend: Backend) -> None:
    pending = await submit(backend)
    assert await backend.task_replay(TaskFilter(ids=[pending])) == 0
    assert await backend.task_purge(TaskFilter(ids=[pending])) == 0
    assert len((await backend.task_get(pending)).history) == 1


async def test_replay_by_label(backend: Backend) -> None:
    tagged = await _dead(backend, labels=["billing", "eu"])
    untagged = await _dead(backend, labels=["eu"])
    assert await backend.task_replay(TaskFilter(label="billing")) == 1
    assert (await backend.task_get(tagged)).state is State.PENDING
    assert (await backend.task_get(untagged)).state is State.FAILED


async def test_purge_deletes_only_failed_tasks_matching_the_filter(backend: Backend) -> None:
    doomed = await _dead(backend, queue="a")
    kept_queue = await _dead(backend, queue="b")
    alive = await submit(backend, queue="a")
    cancelled = await submit(backend, queue="a")
    await backend.task_cancel(CancelParams(cancelled))
    assert await backend.task_purge(TaskFilter(queue="a")) == 1
    with pytest.raises(TaskNotFound):
        await backend.task_get(doomed)
    assert {t.id for t in await all_tasks(backend)} == {kept_queue, alive, cancelled}
    assert await backend.task_purge(TaskFilter()) == 1
    assert (await backend.stats()).dlq_size == 0


async def test_purge_and_replay_count_what_they_take_in_the_metric_totals(backend: Backend) -> None:
    """``/metrics`` adds these back, so its task counters never go down."""
    await backend.task_purge(TaskFilter())
    await backend.task_replay(TaskFilter())
    assert (await backend.metrics_read()).get(PURGED_KEY, 0) == 0  # nothing matched: nothing added
    for _ in range(3):
        await _dead(backend, queue="x")
    await _dead(backend, queue="y")
    assert await backend.task_replay(TaskFilter(queue="y")) == 1
    assert await backend.task_purge(TaskFilter(queue="x")) == 3
    await backend.metrics_add({"other": 1.0})
    totals = await backend.metrics_read()
    assert (totals[PURGED_KEY], totals[REPLAYED_KEY], totals["other"]) == (3, 1, 1)


async def test_purge_frees_the_idempotency_key(backend: Backend) -> None:
    first = await _dead(backend, queue="q", idempotency_key="k")
    await backend.task_purge(TaskFilter(ids=[first]))
    (again,) = await enqueue(backend, new_task(queue="q", idempotency_key="k"))
    assert again.created and again.id != first


async def _listing_fixture(backend: Backend) -> dict[str, str]:
    return {
        "b-failed": await _dead(backend, queue="b", name="x.one", labels=["blue"]),
        "a-pending": await submit(backend, queue="a", name="x.one", labels=["red"]),
        "b-pending": await submit(backend, queue="b", name="x.two", labels=["red", "blue"]),
        "a-scheduled": await submit(backend, queue="a", name="x.two", delay=600),
    }


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (TaskFilter(), {"a-pending", "b-pending", "a-scheduled", "b-failed"}),
        (TaskFilter(state=State.PENDING), {"a-pending", "b-pending"}),
        (TaskFilter(state=State.FAILED), {"b-failed"}),
        (TaskFilter(queue="a"), {"a-pending", "a-scheduled"}),
        (TaskFilter(name="x.one"), {"a-pending", "b-failed"}),
        (TaskFilter(label="blue"), {"b-pending", "b-failed"}),
        (TaskFilter(queue="b", label="red"), {"b-pending"}),
        (TaskFilter(state=State.RUNNING), set()),
    ],
)
async def test_task_list_filters(backend: Backend, flt: TaskFilter, expected: set[str]) -> None:
    ids = await _listing_fixture(backend)
    page = await backend.task_list(ListParams(filter=flt, limit=100))
    assert {t.id for t in page.items} == {ids[k] for k in expected}
    assert page.next_cursor is None


async def test_task_list_filters_by_ids(backend: Backend) -> None:
    ids = await _listing_fixture(backend)
    wanted = [ids["a-pending"], ids["b-failed"], "0190f0e0-0000-7000-8000-000000000000"]
    page = await backend.task_list(ListParams(filter=TaskFilter(ids=wanted)))
    assert {t.id for t in page.items} == {ids["a-pending"], ids["b-failed"]}


async def test_task_list_pages_visit_every_task_once_newest_first(backend: Backend) -> None:
    tasks = [new_task(queue="even" if i % 2 == 0 else "odd") for i in range(23)]
    await enqueue(backend, *tasks)
    for flt, expected in (
        (TaskFilter(), tasks),
        (TaskFilter(queue="odd"), [t for t in tasks if t.queue == "odd"]),
    ):
        seen: list[str] = []
        cursor = None
        for _ in range(30):
            page = await backend.task_list(ListParams(filter=flt, limit=5, cursor=cursor))
            assert len(page.items) <= 5
            seen.extend(t.id for t in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == [t.id for t in reversed(expected)]


async def test_task_list_cursor_is_stable_while_new_tasks_arrive(backend: Backend) -> None:
    old = [new_task() for _ in range(6)]
    await enqueue(backend, *old)
    first = await backend.task_list(ListParams(limit=3))
    await enqueue(backend, new_task(), new_task())
    second = await backend.task_list(ListParams(limit=3, cursor=first.next_cursor))
    assert [t.id for t in first.items + second.items] == [t.id for t in reversed(old)]


async def test_queue_list_counts_states_and_pending_bands(backend: Backend) -> None:
    await enqueue(
        backend,
        new_task(queue="a", priority=9),
        new_task(queue="a", priority=5),
        new_task(queue="a", priority=4),
        new_task(queue="a", priority=0),
        new_task(queue="a", delay=600),
        new_task(queue="b", priority=10),
    )
    await claim_one(backend, queues=("b",))
    await _dead(backend, queue="b")
    queues = {q.name: q for q in await backend.queue_list()}
    assert set(queues) == {"a", "b"}
    a, b = queues["a"], queues["b"]
    assert {k: v for k, v in a.counts.items() if v} == {"pending": 4, "scheduled": 1}
    assert {k: v for k, v in b.counts.items() if v} == {"running": 1, "failed": 1}
    assert {band: a.pending_by_band.get(band, 0) for band in ("high", "medium", "low")} == {
        "high": 1,
        "medium": 2,
        "low": 1,
    }
    assert sum(b.pending_by_band.values()) == 0


async def test_stats_count_tasks_per_state_and_the_dlq(backend: Backend) -> None:
    await enqueue(backend, *(new_task() for _ in range(4)), new_task(delay=600))
    first, second, third = await claim(backend, 3)
    await backend.task_finish_many([complete(first), fail(second, FailureReason.PERMANENT_ERROR)])
    await backend.task_finish_many([retry(third, time.time() + 600)])
    stats = await backend.stats()
    assert {k: v for k, v in stats.counts.items() if v} == {
        "pending": 1,
        "scheduled": 1,
        "retrying": 1,
        "succeeded": 1,
        "failed": 1,
    }
    assert stats.dlq_size == 1
    assert stats.finished_last_minute == 2
    assert stats.throughput_per_second > 0
    assert [q.name for q in stats.queues] == ["default"]
    assert stats.queues[0].counts.get("pending") == 1


async def test_stats_of_an_empty_store_are_zero(backend: Backend) -> None:
    stats = await backend.stats()
    assert sum(stats.counts.values()) == 0 and stats.dlq_size == 0 and stats.finished_last_minute == 0
    assert sum(stats.workers.values()) == 0
    assert stats.queues == []
