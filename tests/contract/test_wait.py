"""``task_wait``: wake promptly when work arrives from elsewhere, else time out."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from conveyor.backends import make_backend
from conveyor.backends.base import Backend, Lease, ReapParams, ReleaseParams, TaskFilter, WaitParams
from conveyor.states import FailureReason

from .conftest import OpenBackend
from .helpers import claim_one, enqueue, fail, new_task, submit

PROMPT = 1.0  # seconds: "at once" with room for a loaded CI machine and a polling engine


async def _settle(backend: Backend) -> None:
    """Absorb late news of work the last claim already took.

    PostgreSQL and Redis deliver notifications on another connection, so the news of
    a submit may arrive after the claim that took its task: such a late wake-up costs
    a worker one empty claim and is allowed. One short wait consumes it, so the timed
    wait after this starts from a quiet state."""
    await backend.task_wait(WaitParams(timeout=0.3))


async def _timed_wait(backend: Backend, params: WaitParams) -> tuple[asyncio.Task[None], float]:
    started = time.monotonic()
    waiter = asyncio.create_task(backend.task_wait(params))
    await asyncio.sleep(0.05)  # let the waiter start listening
    assert not waiter.done()
    return waiter, started


async def test_task_wait_returns_promptly_after_an_enqueue_from_another_instance(
    backend: Backend, open_backend: OpenBackend
) -> None:
    other = await open_backend()
    waiter, started = await _timed_wait(backend, WaitParams(queues=["default"], timeout=10))
    await enqueue(other, new_task())
    await asyncio.wait_for(waiter, 5)
    assert time.monotonic() - started < PROMPT


async def test_task_wait_returns_promptly_after_an_enqueue_from_another_thread(backend: Backend) -> None:
    waiter, started = await _timed_wait(backend, WaitParams(timeout=10))

    async def submit_elsewhere() -> None:
        b = make_backend(backend.url)
        await b.open()
        try:
            await enqueue(b, new_task(queue="any"))
        finally:
            await b.close()

    thread = threading.Thread(target=asyncio.run, args=(submit_elsewhere(),))
    thread.start()
    await asyncio.wait_for(waiter, 5)
    await asyncio.to_thread(thread.join)
    assert time.monotonic() - started < PROMPT


async def test_task_wait_times_out_without_work(backend: Backend) -> None:
    started = time.monotonic()
    await backend.task_wait(WaitParams(queues=["default"], timeout=0.2))
    assert 0.15 <= time.monotonic() - started < PROMPT


async def test_task_wait_wakes_when_a_lease_is_released(backend: Backend, open_backend: OpenBackend) -> None:
    other = await open_backend()
    await submit(backend)
    claimed = await claim_one(backend, worker_id="w1")
    await _settle(backend)
    waiter, started = await _timed_wait(backend, WaitParams(timeout=10))
    await other.task_release(ReleaseParams(worker_id="w1", leases=[Lease(claimed.id, claimed.lease_token)]))
    await asyncio.wait_for(waiter, 5)
    assert time.monotonic() - started < PROMPT


async def test_task_wait_wakes_when_a_lease_is_reaped(backend: Backend, open_backend: OpenBackend) -> None:
    other = await open_backend()
    await submit(backend)
    now = time.time()
    await claim_one(backend, lease_seconds=1, now=now)
    await _settle(backend)
    waiter, started = await _timed_wait(backend, WaitParams(timeout=10))
    assert len(await other.task_reap_expired(ReapParams(now=now + 5))) == 1
    await asyncio.wait_for(waiter, 5)
    assert time.monotonic() - started < PROMPT


async def test_task_wait_wakes_when_a_dead_letter_is_replayed(backend: Backend, open_backend: OpenBackend) -> None:
    other = await open_backend()
    await submit(backend)
    claimed = await claim_one(backend)
    await backend.task_finish_many([fail(claimed, FailureReason.PERMANENT_ERROR)])
    await _settle(backend)
    waiter, started = await _timed_wait(backend, WaitParams(timeout=10))
    assert await other.task_replay(TaskFilter()) == 1
    await asyncio.wait_for(waiter, 5)
    assert time.monotonic() - started < PROMPT


@pytest.mark.parametrize("timeout", [0.0, 0.05])
async def test_task_wait_with_a_tiny_timeout_returns(backend: Backend, timeout: float) -> None:
    await asyncio.wait_for(backend.task_wait(WaitParams(timeout=timeout)), PROMPT)
