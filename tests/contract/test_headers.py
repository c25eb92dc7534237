"""A task's ``headers`` (trace context, request id) travel from the submit to every
attempt and to readers, unchanged; none read back as an empty mapping."""

from __future__ import annotations

from conveyor.backends.base import Backend

from .helpers import claim_one, enqueue, new_task

HEADERS = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "request_id": "req-é-42"}


async def test_headers_reach_the_claim_and_the_reader(backend: Backend) -> None:
    task = new_task(headers=dict(HEADERS))
    await enqueue(backend, task)
    assert (await claim_one(backend)).headers == HEADERS
    assert (await backend.task_get(task.id)).headers == HEADERS


async def test_a_task_without_headers_has_empty_ones(backend: Backend) -> None:
    task = new_task()
    await enqueue(backend, task)
    assert (await claim_one(backend)).headers == {}
    assert (await backend.task_get(task.id)).headers == {}
