"""The worker registry: register, heartbeat, deregister, and offline detection."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from conveyor.backends.base import Backend, HeartbeatParams
from conveyor.models import WorkerState

from .conftest import OpenBackend
from .helpers import worker_info


def beat(
    worker_id: str, state: WorkerState, *, active: int = 0, processed: int = 0, now: float | None = None
) -> HeartbeatParams:
    return HeartbeatParams(
        worker_id=worker_id,
        state=state,
        leases=[],
        lease_seconds=30,
        active=active,
        processed=processed,
        now=now,
    )


async def test_registered_worker_is_listed_with_its_details(backend: Backend) -> None:
    info = worker_info("w1", host="box", pid=77, queues=["a", "b"], tags=["gpu"], concurrency=8, version="1.2")
    await backend.worker_register(info)
    (listed,) = await backend.worker_list()
    assert (listed.id, listed.host, listed.pid, listed.queues, listed.tags) == ("w1", "box", 77, ["a", "b"], ["gpu"])
    assert (listed.concurrency, listed.version, listed.state) == (8, "1.2", WorkerState.IDLE)


async def test_register_again_replaces_the_row(backend: Backend) -> None:
    await backend.worker_register(worker_info("w1", pid=1))
    await backend.worker_register(worker_info("w1", pid=2))
    assert [(w.id, w.pid) for w in await backend.worker_list()] == [("w1", 2)]


async def test_heartbeat_updates_state_and_counters(backend: Backend) -> None:
    await backend.worker_register(worker_info("w1"))
    await backend.worker_register(worker_info("w2"))
    now = time.time()
    await backend.worker_heartbeat(beat("w1", WorkerState.BUSY, active=3, processed=41, now=now))
    workers = {w.id: w for w in await backend.worker_list()}
    assert (workers["w1"].state, workers["w1"].active, workers["w1"].processed) == (WorkerState.BUSY, 3, 41)
    assert abs(workers["w1"].last_heartbeat_at.timestamp() - now) < 1e-3
    assert workers["w2"].state is WorkerState.IDLE


async def test_deregistered_worker_reads_offline(backend: Backend) -> None:
    await backend.worker_register(worker_info("w1"))
    await backend.worker_register(worker_info("w2"))
    await backend.worker_deregister("w1")
    assert {w.id: w.state for w in await backend.worker_list()} == {
        "w1": WorkerState.OFFLINE,
        "w2": WorkerState.IDLE,
    }
    assert (await backend.stats()).workers.get("offline") == 1


async def test_worker_silent_for_longer_than_offline_after_reads_offline(open_backend: OpenBackend) -> None:
    backend = await open_backend(offline_after=0.3)
    await backend.worker_register(worker_info("w1"))
    await backend.worker_register(worker_info("w2"))
    assert {w.state for w in await backend.worker_list()} == {WorkerState.IDLE}
    await asyncio.sleep(0.4)
    await backend.worker_heartbeat(beat("w2", WorkerState.IDLE))
    assert {w.id: w.state for w in await backend.worker_list()} == {
        "w1": WorkerState.OFFLINE,
        "w2": WorkerState.IDLE,
    }
    stats = await backend.stats()
    assert (stats.workers.get("offline"), stats.workers.get("idle")) == (1, 1)


async def test_worker_with_an_old_heartbeat_reads_offline_at_once(backend: Backend) -> None:
    old = datetime.now(UTC) - timedelta(seconds=backend.offline_after + 60)
    await backend.worker_register(worker_info("w1", started_at=old, last_heartbeat_at=old))
    assert [w.state for w in await backend.worker_list()] == [WorkerState.OFFLINE]


async def test_offline_worker_that_heartbeats_again_is_live(backend: Backend) -> None:
    await backend.worker_register(worker_info("w1"))
    await backend.worker_deregister("w1")
    await backend.worker_register(worker_info("w1"))
    await backend.worker_heartbeat(beat("w1", WorkerState.STOPPING))
    assert [w.state for w in await backend.worker_list()] == [WorkerState.STOPPING]


async def test_workers_are_shared_by_every_instance_on_the_url(backend: Backend, open_backend: OpenBackend) -> None:
    other = await open_backend()
    await other.worker_register(worker_info("w-other"))
    assert [w.id for w in await backend.worker_list()] == ["w-other"]
