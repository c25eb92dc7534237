"""A task's context travels from its submit to its attempts: the OpenTelemetry trace
(a worker's span joins the submitter's trace, as a child of the submit's span) and the
HTTP request id (a worker's log lines for the task carry it)."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from conveyor import Conveyor
from conveyor.config import Settings, WorkerConfig
from conveyor.logs import formatter, request_id_var
from tests.integration.tasks_app import build_app
from tests.integration.test_worker_inprocess import finished, running

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # once per process: the global can be set once
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def traced_app(tracing: bool = True) -> Conveyor:
    url = f"memory://trace-{uuid.uuid4().hex}"
    worker = WorkerConfig(lease_seconds=2, heartbeat_interval=0.1, reap_interval=0.1, poll_max=0.05)
    return build_app(url, settings=Settings(url=url, worker=worker, tracing=tracing))


def by_name(spans: InMemorySpanExporter, prefix: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name.startswith(prefix)]


async def test_a_workers_span_joins_the_submitters_trace(spans: InMemorySpanExporter) -> None:
    app = traced_app()
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("handle request") as outer:
        ok = await app.submit_async("it.where_async", {"x": 1})
        bad = await app.submit_async("it.bad_input", {"counter": f"/tmp/{uuid.uuid4().hex}"})
    async with running(app):
        await finished(app, ok, bad)
    await app.aclose()
    (root,) = by_name(spans, "handle request")
    submits = by_name(spans, "conveyor.submit")
    runs = {s.attributes["messaging.message.id"]: s for s in by_name(spans, "conveyor.run")}  # type: ignore[index]
    assert [s.kind for s in submits] == [SpanKind.PRODUCER, SpanKind.PRODUCER]
    assert all(s.parent is not None and s.parent.span_id == root.context.span_id for s in submits)
    trace_id = outer.get_span_context().trace_id
    for handle, submit in zip((ok, bad), submits, strict=True):
        run = runs[handle.id]
        assert run.kind is SpanKind.CONSUMER
        assert run.context.trace_id == trace_id  # the same trace, across the engine
        assert run.parent is not None and run.parent.span_id == submit.context.span_id
        assert run.name == f"conveyor.run {submit.name.removeprefix('conveyor.submit ')}"
    assert runs[ok.id].status.status_code is not StatusCode.ERROR
    assert runs[bad.id].status.status_code is StatusCode.ERROR
    assert runs[bad.id].attributes is not None and runs[bad.id].attributes["conveyor.outcome"] == "fail"
    stored = await app.get_async(ok.id)
    assert stored.headers["traceparent"].split("-")[1] == f"{trace_id:032x}"


async def test_without_tracing_no_span_and_no_trace_context_is_stored(spans: InMemorySpanExporter) -> None:
    app = traced_app(tracing=False)
    with trace.get_tracer("test").start_as_current_span("handle request"):
        handle = await app.submit_async("it.where_async", {"x": 1})
    async with running(app):
        await finished(app, handle)
    await app.aclose()
    assert [s.name for s in spans.get_finished_spans()] == ["handle request"]
    assert "traceparent" not in (await app.get_async(handle.id)).headers


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict[str, Any]] = []
        self.setFormatter(formatter("json"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


async def test_the_submitting_requests_id_is_on_the_workers_lines_for_the_task() -> None:
    from conveyor.logs import ContextFields

    app = traced_app(tracing=False)
    token = request_id_var.set("req-7f3a")
    try:
        handle = await app.submit_async("it.retry_later", {"counter": f"/tmp/{uuid.uuid4().hex}", "delay": 0.05})
    finally:
        request_id_var.reset(token)
    assert (await app.get_async(handle.id)).headers == {"request_id": "req-7f3a"}
    lines = _Lines()
    lines.addFilter(ContextFields())
    logger = logging.getLogger("conveyor")
    logger.addHandler(lines)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        async with running(app):
            await finished(app, handle)
            await asyncio.sleep(0.05)
    finally:
        logger.removeHandler(lines)
        logger.setLevel(old)
        await app.aclose()
    mine = [line for line in lines.lines if line.get("task_id") == handle.id]
    assert mine, lines.lines
    assert all(line["request_id"] == "req-7f3a" for line in mine)
