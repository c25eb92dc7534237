"""The outbox (``OutboxStore``): events recorded in the step that changes the task,
only when subscribed, leased to one deliverer at a time, dropped or rescheduled."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from conveyor.backends.base import (
    OUTBOX_EVENTS,
    Backend,
    CancelParams,
    OutboxClaimParams,
    OutboxEvent,
    OutboxSettle,
    ReapParams,
)
from conveyor.errors import InvalidInput
from conveyor.ids import new_id
from conveyor.states import FailureReason, State

from .conftest import OpenBackend
from .helpers import claim, claim_one, complete, enqueue, fail, new_task, retry, single_store_only, submit

ALL = frozenset(OUTBOX_EVENTS)


async def _drain(backend: Backend, now: float | None = None) -> list[OutboxEvent]:
    return await backend.outbox_claim(OutboxClaimParams(limit=1000, lease_seconds=60, now=now))


def _summary(events: list[OutboxEvent]) -> list[tuple[str, str, State]]:
    return [(e.event, e.task_id, e.state) for e in events]


async def test_nothing_is_recorded_without_a_subscription(backend: Backend) -> None:
    await submit(backend)
    claimed = await claim_one(backend)
    await backend.task_finish_many([complete(claimed)])
    assert await backend.outbox_size() == 0
    assert await _drain(backend) == []


async def test_unknown_event_names_are_refused(backend: Backend) -> None:
    with pytest.raises(InvalidInput, match=r"task\.exploded"):
        await backend.outbox_subscribe(frozenset({"task.succeeded", "task.exploded"}))


async def test_a_success_records_one_event_with_the_task_fields(backend: Backend) -> None:
    await backend.outbox_subscribe(frozenset({"task.succeeded"}))
    task_id = await submit(backend, queue="mail", name="email.send")
    claimed = await claim_one(backend)
    before = time.time()
    await backend.task_finish_many([complete(claimed, result=1)])
    assert await backend.outbox_size() == 1
    (event,) = await _drain(backend)
    assert (event.event, event.task_id, event.queue, event.name) == ("task.succeeded", task_id, "mail", "email.send")
    assert (event.state, event.attempt, event.workflow_id, event.done) == (State.SUCCEEDED, 1, None, ())
    assert (json.loads(event.result or "null"), event.error) == (1, None)
    assert event.deliveries == 1
    assert before - 1 <= event.at <= time.time() + 1


async def test_failures_record_failed_and_dead_lettered_as_subscribed(backend: Backend) -> None:
    await backend.outbox_subscribe(ALL)
    first = await submit(backend)
    claimed = await claim_one(backend)
    await backend.task_finish_many([retry(claimed, run_at=time.time() - 1)])
    claimed = await claim_one(backend)
    await backend.task_finish_many([fail(claimed, FailureReason.PERMANENT_ERROR)])
    events = await _drain(backend)
    assert _summary(events) == [
        ("task.failed", first, State.RETRYING),
        ("task.failed", first, State.FAILED),
        ("task.dead_lettered", first, State.FAILED),
    ]
    assert [e.attempt for e in events] == [1, 2, 2]
    assert all(json.loads(e.error or "{}").get("type") == "ValueError" for e in events)
    assert [e.id for e in events] == sorted(e.id for e in events)


async def test_only_subscribed_events_are_recorded_and_a_new_set_replaces_the_old(backend: Backend) -> None:
    await backend.outbox_subscribe(frozenset({"task.dead_lettered"}))
    await submit(backend)
    claimed = await claim_one(backend)
    await backend.task_finish_many([fail(claimed, FailureReason.PERMANENT_ERROR)])
    assert [e.event for e in await _drain(backend)] == ["task.dead_lettered"]
    await backend.outbox_subscribe(frozenset())
    await submit(backend)
    claimed = await claim_one(backend)
    await backend.task_finish_many([fail(claimed, FailureReason.PERMANENT_ERROR)])
    assert await backend.outbox_size() == 1  # the earlier event stays, no new one


async def test_a_reaped_task_out_of_attempts_is_dead_lettered(backend: Backend) -> None:
    await backend.outbox_subscribe(frozenset({"task.dead_lettered"}))
    task_id = await submit(backend, max_retries=0)
    now = time.time()
    await claim_one(backend, lease_seconds=1, now=now)
    assert await backend.task_reap_expired(ReapParams(now=now + 5)) == [task_id]
    assert _summary(await _drain(backend, now + 5)) == [("task.dead_lettered", task_id, State.FAILED)]


async def test_a_dependency_failure_dead_letters_the_dependents_and_finishes_the_workflow_once(
    backend: Backend,
) -> None:
    await backend.outbox_subscribe(frozenset({"task.dead_lettered", "workflow.finished"}))
    wf = new_id()
    a = new_task(workflow_id=wf, workflow_key="a")
    b = new_task(workflow_id=wf, workflow_key="b", depends_on=[a.id])
    c = new_task(workflow_id=wf, workflow_key="c", depends_on=[b.id])
    await enqueue(backend, a, b, c)
    claimed = await claim_one(backend)
    await backend.task_finish_many([fail(claimed, FailureReason.PERMANENT_ERROR)])
    events = await _drain(backend)
    dead = sorted(e.task_id for e in events if e.event == "task.dead_lettered")
    assert dead == sorted([a.id, b.id, c.id])
    (finished,) = [e for e in events if e.event == "workflow.finished"]
    assert finished.workflow_id == wf


async def test_a_workflow_finishes_when_its_last_task_does_even_if_cancelled(backend: Backend) -> None:
    await backend.outbox_subscribe(frozenset({"workflow.finished"}))
    wf = new_id()
    a = new_task(workflow_id=wf, workflow_key="a")
    b = new_task(workflow_id=wf, workflow_key="b")
    await enqueue(backend, a, b)
    first, second = await claim(backend, 2)
    await backend.task_finish_many([complete(first)])
    assert await backend.outbox_size() == 0  # one node still runs
    await backend.task_finish_many([complete(second)])
    (event,) = await _drain(backend)
    assert (event.event, event.workflow_id) == ("workflow.finished", wf)
    wf2 = new_id()
    await enqueue(backend, new_task(workflow_id=wf2, workflow_key="x", delay=3600))
    (only,) = await backend.workflow_get(wf2)
    await backend.task_cancel(CancelParams(task_id=only.id))
    assert [(e.event, e.workflow_id) for e in await _drain(backend)] == [("workflow.finished", wf2)]


async def test_a_cancel_records_task_cancelled_before_the_workflow_it_finishes(backend: Backend) -> None:
    await backend.outbox_subscribe(ALL)
    queued, running = await submit(backend, delay=3600), await submit(backend)
    claimed = await claim_one(backend)
    assert claimed.id == running
    await backend.task_cancel(CancelParams(task_id=queued))
    await backend.task_cancel(CancelParams(task_id=running))
    events = await _drain(backend)
    assert _summary(events) == [
        ("task.cancelled", queued, State.CANCELLED),
        ("task.cancelled", running, State.CANCELLED),
    ]
    wf = new_id()
    await enqueue(backend, new_task(workflow_id=wf, workflow_key="x", delay=3600))
    (only,) = await backend.workflow_get(wf)
    await backend.task_cancel(CancelParams(task_id=only.id))
    assert [(e.event, e.workflow_id) for e in await _drain(backend)] == [
        ("task.cancelled", wf),
        ("workflow.finished", wf),
    ]


async def test_two_last_nodes_finishing_in_one_batch_finish_the_workflow_once(backend: Backend) -> None:
    await backend.outbox_subscribe(frozenset({"workflow.finished"}))
    wf = new_id()
    await enqueue(backend, new_task(workflow_id=wf, workflow_key="a"), new_task(workflow_id=wf, workflow_key="b"))
    first, second = await claim(backend, 2)
    await backend.task_finish_many([complete(first), complete(second)])
    assert [e.workflow_id for e in await _drain(backend)] == [wf]


async def test_a_big_workflow_finishes_only_when_its_oldest_open_task_does(backend: Backend) -> None:
    """The one unfinished node is the oldest of 70: found past the newest ones."""
    await backend.outbox_subscribe(frozenset({"workflow.finished"}))
    wf = new_id()
    await enqueue(backend, *(new_task(workflow_id=wf, workflow_key=f"n{i:02}") for i in range(70)))
    claimed = sorted(await claim(backend, 70), key=lambda t: t.id)
    await backend.task_finish_many([complete(t) for t in claimed[1:]])
    assert await backend.outbox_size() == 0
    await backend.task_finish_many([complete(claimed[0])])
    assert [e.workflow_id for e in await _drain(backend)] == [wf]


async def test_a_claimed_event_is_leased_and_comes_back_after_the_lease(backend: Backend) -> None:
    await backend.outbox_subscribe(frozenset({"task.succeeded"}))
    await submit(backend)
    await backend.task_finish_many([complete(await claim_one(backend))])
    now = time.time()
    (event,) = await backend.outbox_claim(OutboxClaimParams(lease_seconds=10, now=now))
    assert await backend.outbox_claim(OutboxClaimParams(lease_seconds=10, now=now + 5)) == []
    (again,) = await backend.outbox_claim(OutboxClaimParams(lease_seconds=10, now=now + 11))
    assert (again.id, again.deliveries) == (event.id, 2)


async def test_settle_drops_delivered_events_and_reschedules_the_rest_with_what_was_done(
    backend: Backend,
) -> None:
    await backend.outbox_subscribe(frozenset({"task.succeeded"}))
    for _ in range(3):
        await submit(backend)
    await backend.task_finish_many([complete(c) for c in await claim(backend, 3)])
    now = time.time()
    first, second, third = await _drain(backend, now)
    await backend.outbox_settle([OutboxSettle(first.id), OutboxSettle(second.id, retry_at=now + 100, done=("hook-a",))])
    assert await backend.outbox_size() == 2
    assert await _drain(backend, now + 50) == []  # second waits for its retry; third is leased
    later = await _drain(backend, now + 101)
    assert [(e.id, e.done) for e in later] == [(second.id, ("hook-a",)), (third.id, ())]
    await backend.outbox_settle([OutboxSettle(e.id) for e in later])
    await backend.outbox_settle([OutboxSettle(first.id)])  # already gone: nothing happens
    assert await backend.outbox_size() == 0


async def test_claim_limit_takes_the_oldest_first(backend: Backend, backend_url: str) -> None:
    single_store_only(backend_url, "each shard hands out its own oldest events; a limit is split over shards")
    await backend.outbox_subscribe(frozenset({"task.succeeded"}))
    for _ in range(5):
        await submit(backend)
    for claimed in await claim(backend, 5):
        await backend.task_finish_many([complete(claimed)])
    every = await _drain(backend)
    await backend.outbox_settle([OutboxSettle(e.id, retry_at=0) for e in every])
    two = await backend.outbox_claim(OutboxClaimParams(limit=2, lease_seconds=60))
    assert [e.id for e in two] == [e.id for e in every[:2]]


async def test_subscribers_starting_together_all_succeed(backend: Backend, open_backend: OpenBackend) -> None:
    others = [await open_backend() for _ in range(3)]
    events = frozenset({"task.succeeded", "task.dead_lettered"})
    await asyncio.gather(*(b.outbox_subscribe(events) for b in [backend, *others]))
    await submit(backend)
    await backend.task_finish_many([complete(await claim_one(backend))])
    assert [e.event for e in await _drain(backend)] == ["task.succeeded"]
