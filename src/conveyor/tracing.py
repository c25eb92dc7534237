"""What a task carries from its submit to its attempts: ``headers``, and OpenTelemetry.

A task's ``headers`` are set by Conveyor when it is submitted and stored by every
engine: ``request_id`` (the HTTP request that submitted it, so a worker's log lines for
it carry the same id as the API's) and, with tracing on, the W3C trace context
(``traceparent``, ``tracestate``) of the submit's span.

Tracing is off unless ``tracing: true`` is configured (``CONVEYOR_TRACING=true``) and
``opentelemetry-api`` is installed (``pip install 'conveyor[otel]'``); the application
configures the SDK (exporter, sampler) as usual. Then a submit runs in a
``conveyor.submit <name>`` span (kind PRODUCER) whose context goes into the task, and
each attempt runs in a ``conveyor.run <name>`` span (kind CONSUMER), a child of it: the
worker's span joins the submitter's trace across processes and engines. Off, all of
this costs a context-variable read per submit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from conveyor.logs import request_id_var

if TYPE_CHECKING:
    from conveyor.models import ClaimedTask

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # pragma: no cover - depends on the install
    trace = None  # type: ignore[assignment]

REQUEST_ID = "request_id"
_TRACER = "conveyor"


def available() -> bool:
    """Whether OpenTelemetry's API is installed."""
    return trace is not None


def headers(tracing: bool) -> dict[str, str]:
    """The headers of a task submitted now, in the current context."""
    out: dict[str, str] = {}
    request_id = request_id_var.get()
    if request_id is not None:
        out[REQUEST_ID] = request_id
    if tracing and trace is not None:
        propagate.inject(out)  # nothing unless a span is recording
    return out


@contextlib.contextmanager
def submit_span(tracing: bool, name: str, count: int = 1) -> Iterator[None]:
    """The span a submit runs in (none when tracing is off): build the tasks inside it,
    so ``headers`` captures it as their parent."""
    if not tracing or trace is None:
        yield
        return
    attributes: dict[str, Any] = {"messaging.system": "conveyor", "messaging.operation.type": "send"}
    if count != 1:
        attributes["messaging.batch.message_count"] = count
    tracer = trace.get_tracer(_TRACER)
    with tracer.start_as_current_span(f"conveyor.submit {name}", kind=SpanKind.PRODUCER, attributes=attributes):
        yield


@contextlib.contextmanager
def attempt_span(tracing: bool, ct: ClaimedTask) -> Iterator[Any]:
    """The span one attempt runs in, a child of its submit's (none when tracing is off).
    Yields the span (or ``None``) so the caller can record the outcome on it."""
    if not tracing or trace is None:
        yield None
        return
    parent = propagate.extract(ct.headers) if ct.headers else None
    attributes: dict[str, Any] = {
        "messaging.system": "conveyor",
        "messaging.operation.type": "process",
        "messaging.destination.name": ct.queue,
        "messaging.message.id": ct.id,
        "conveyor.task.name": ct.name,
        "conveyor.task.attempt": ct.attempts,
    }
    tracer = trace.get_tracer(_TRACER)
    with tracer.start_as_current_span(
        f"conveyor.run {ct.name}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span


def record_outcome(span: Any, kind: str, error_type: str | None = None) -> None:
    """Mark an attempt's span with how the attempt ended."""
    if span is None:
        return
    span.set_attribute("conveyor.outcome", kind)
    if kind != "complete":
        span.set_status(Status(StatusCode.ERROR, error_type))
