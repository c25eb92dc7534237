"""Many callers submitting at once: each gets exactly its own outcome.

Engines may carry concurrent submits together (PostgreSQL shares statements between
them, Redis pipelines them); none of that may leak between callers."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.backends.base import Backend, Enqueued
from conveyor.errors import TaskExists
from conveyor.states import State

from .helpers import all_tasks, enqueue, new_task


async def test_concurrent_submits_each_get_their_own_ids_and_states(backend: Backend) -> None:
    batches = [
        [new_task(delay=60)] if i % 5 == 0 else [new_task(), new_task(queue="other")] if i % 7 == 0 else [new_task()]
        for i in range(48)
    ]
    outcomes = await asyncio.gather(*(enqueue(backend, *batch) for batch in batches))
    for batch, done in zip(batches, outcomes, strict=True):
        assert [d.id for d in done] == [t.id for t in batch]
        assert all(d.created for d in done)
        assert [d.state for d in done] == [State.SCHEDULED if t.run_at > t.created_at else State.PENDING for t in batch]
    stored = {t.id: t for t in await all_tasks(backend)}
    assert set(stored) == {t.id for batch in batches for t in batch}
    for batch in batches:
        for t in batch:
            assert (stored[t.id].queue, stored[t.id].args) == (t.queue, t.args)


async def test_a_refused_concurrent_submit_does_not_sink_the_others(backend: Backend) -> None:
    first = new_task()
    await enqueue(backend, first)
    batches = [[new_task(args={"n": i})] for i in range(24)]
    batches[9] = [new_task(id=first.id)]
    if not backend.url.lower().startswith("shards+"):  # a batch is atomic per shard (docs/sharding.md)
        batches[9].insert(0, new_task())  # so this caller's batch is refused whole
    outcomes: list[list[Enqueued] | BaseException] = await asyncio.gather(
        *(enqueue(backend, *batch) for batch in batches), return_exceptions=True
    )
    assert isinstance(outcomes[9], TaskExists)
    for i, (batch, done) in enumerate(zip(batches, outcomes, strict=True)):
        if i != 9:
            assert not isinstance(done, BaseException), done
            assert [d.id for d in done] == [t.id for t in batch]
    stored = {t.id for t in await all_tasks(backend)}
    expected = {first.id} | {t.id for i, batch in enumerate(batches) if i != 9 for t in batch}
    assert stored == expected


@pytest.mark.parametrize("callers", [2, 40])
async def test_two_concurrent_callers_with_one_id_store_it_once(backend: Backend, callers: int) -> None:
    clash = new_task()
    others = [new_task() for _ in range(callers - 2)]
    calls = [enqueue(backend, clash), enqueue(backend, new_task(id=clash.id, args={"n": 2}))]
    calls += [enqueue(backend, t) for t in others]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert sum(isinstance(o, TaskExists) for o in outcomes[:2]) == 1
    assert not any(isinstance(o, BaseException) for o in outcomes[2:])
    stored = {t.id for t in await all_tasks(backend)}
    assert stored == {clash.id} | {t.id for t in others}
