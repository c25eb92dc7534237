"""``Gather``: concurrent small submits share statements, and each caller gets its own outcome.

The store here is a recording function whose calls the test holds open, so each test
decides what is in flight; the engine's own behaviour under concurrent submits is in
``tests/contract/test_concurrent_submits.py``."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.backends.base import Enqueued, EnqueueParams
from conveyor.backends.gather import Gather
from conveyor.errors import BackendUnavailable, TaskExists
from conveyor.states import State

from ..contract.helpers import new_task


class Store:
    """Records each statement's task ids; each call waits until the test opens it."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gates: list[asyncio.Event] = []
        self.refuse: set[str] = set()
        self.refusal: type[Exception] = TaskExists
        self.down = False

    async def __call__(self, params: EnqueueParams) -> list[Enqueued]:
        ids = [t.id for t in params.tasks]
        gate = asyncio.Event()
        self.calls.append(ids)
        self.gates.append(gate)
        await gate.wait()
        if self.down:
            raise BackendUnavailable("the engine is down")
        if self.refuse & set(ids):
            raise self.refusal("a task with one of these ids already exists")
        return [Enqueued(i, State.PENDING, True) for i in ids]

    async def open_all(self) -> None:
        """Let every call through, including the ones the released calls start."""
        for _ in range(50):
            for gate in self.gates:
                gate.set()
            await asyncio.sleep(0)


def params(count: int = 1) -> EnqueueParams:
    return EnqueueParams([new_task() for _ in range(count)])


def ids(p: EnqueueParams) -> list[str]:
    return [t.id for t in p.tasks]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_submit_with_a_free_lane_goes_alone_at_once() -> None:
    store = Store()
    gather = Gather(store, lanes=2)
    a, b = params(), params(3)
    calls = [asyncio.ensure_future(gather.submit(p)) for p in (a, b)]
    await settle()
    assert store.calls == [ids(a), ids(b)]  # both lanes busy, nothing merged
    await store.open_all()
    assert [[e.id for e in c.result()] for c in calls] == [ids(a), ids(b)]


async def test_submits_that_find_the_lanes_busy_share_the_next_statement() -> None:
    store = Store()
    gather = Gather(store, lanes=1)
    first = params()
    waiting = [params(), params(2), params()]
    calls = [asyncio.ensure_future(gather.submit(p)) for p in [first, *waiting]]
    await settle()
    assert store.calls == [ids(first)]
    store.gates[0].set()
    await settle()
    assert store.calls == [ids(first), [i for p in waiting for i in ids(p)]]
    await store.open_all()
    assert [[e.id for e in c.result()] for c in calls] == [ids(p) for p in [first, *waiting]]


async def test_a_shared_statement_holds_at_most_most_tasks() -> None:
    store = Store()
    gather = Gather(store, lanes=1, most=3)
    waiting = [params(2), params(), params(2), params(5)]
    calls = [asyncio.ensure_future(gather.submit(p)) for p in [params(), *waiting]]
    await settle()
    await store.open_all()
    await asyncio.gather(*calls)
    # 2 + 1 fill a statement; 2 alone (2 + 5 > 3); a caller larger than `most` goes alone
    assert [len(c) for c in store.calls] == [1, 3, 2, 5]


@pytest.mark.parametrize("refusal", [TaskExists, RuntimeError])
async def test_a_refused_shared_statement_sends_each_caller_alone(refusal: type[Exception]) -> None:
    store = Store()
    store.refusal = refusal
    gather = Gather(store, lanes=1)
    bad = params(2)
    store.refuse = {bad.tasks[1].id}
    waiting = [params(), bad, params()]
    calls = [asyncio.ensure_future(gather.submit(p)) for p in [params(), *waiting]]
    await settle()
    await store.open_all()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(outcomes[2], refusal)
    assert [e.id for e in outcomes[1]] == ids(waiting[0])  # type: ignore[union-attr]
    assert [e.id for e in outcomes[3]] == ids(waiting[2])  # type: ignore[union-attr]
    assert store.calls[1:] == [[i for p in waiting for i in ids(p)], *(ids(p) for p in waiting)]


async def test_an_outage_fails_every_caller_of_the_statement_once() -> None:
    store = Store()
    gather = Gather(store, lanes=1)
    waiting = [params(), params()]
    calls = [asyncio.ensure_future(gather.submit(p)) for p in [params(), *waiting]]
    await settle()
    store.down = True
    await store.open_all()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(o, BackendUnavailable) for o in outcomes)
    assert len(store.calls) == 2  # no caller is sent again alone after an outage


async def test_a_caller_cancelled_while_it_waits_is_not_sent() -> None:
    store = Store()
    gather = Gather(store, lanes=1)
    gone, kept = params(), params()
    calls = [asyncio.ensure_future(gather.submit(p)) for p in [params(), gone, kept]]
    await settle()
    calls[1].cancel()
    await settle()
    await store.open_all()
    assert [e.id for e in await calls[2]] == ids(kept)
    assert store.calls[1] == ids(kept)
    with pytest.raises(asyncio.CancelledError):
        await calls[1]


async def shared_running(store: Store, *waiting: EnqueueParams) -> list[asyncio.Future[list[Enqueued]]]:
    """One lane: a first submit, then ``waiting``; returns once the first has ended and
    the waiters' shared statement is in flight."""
    gather = Gather(store, lanes=1)
    calls = [asyncio.ensure_future(gather.submit(p)) for p in [params(), *waiting]]
    await settle()
    store.gates[0].set()
    await settle()
    assert store.calls[1] == [i for p in waiting for i in ids(p)]
    return calls


async def test_a_caller_cancelled_while_its_statement_runs_leaves_the_others_their_results() -> None:
    store = Store()
    gone, kept = params(), params()
    calls = await shared_running(store, gone, kept)
    calls[1].cancel()
    await store.open_all()
    assert [e.id for e in await calls[2]] == ids(kept)


async def test_drain_waits_for_the_shared_statements_started() -> None:
    store = Store()
    gather = Gather(store, lanes=1)
    calls = [asyncio.ensure_future(gather.submit(params())) for _ in range(3)]
    await settle()
    store.gates[0].set()
    await settle()
    drained = asyncio.ensure_future(gather.drain())
    await settle()
    assert not drained.done()
    await store.open_all()
    await drained
    assert all(c.done() for c in calls)


async def test_a_shared_statement_cancelled_cancels_its_callers_instead_of_leaving_them_waiting() -> None:
    store = Store()
    calls = await shared_running(store, params(), params())
    shared = asyncio.all_tasks() - {asyncio.current_task(), *calls}
    assert len(shared) == 1  # the statement the two waiters share
    shared.pop().cancel()
    await settle()
    assert calls[0].done() and not calls[0].cancelled()
    assert calls[1].cancelled() and calls[2].cancelled()
