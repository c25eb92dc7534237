"""Notifications: webhooks and email on task events, at least once, from the outbox.

The engine records each subscribed event in the same atomic step as the transition
that causes it (``OutboxStore``), so an event exists exactly when its transition
committed. A ``Notifier`` (run by every worker when ``notifications`` are configured,
or alone by ``conveyor notifier``) claims due events in batches under a lease, sends
each to the targets whose ``events``/``queues``/``tasks`` match, and settles the batch:
delivered events are dropped, the rest come back after an exponential backoff,
remembering which targets already have them. A deliverer killed mid-batch loses
nothing: its lease lapses and another takes the events again, so a receiver may see
an event twice and should dedupe on the ``Conveyor-Event-Id`` header.

Webhooks are POSTs of a JSON body signed with HMAC-SHA256 over ``"<timestamp>." +
body`` in the ``Conveyor-Signature`` header (``t=<unix seconds>,v1=<hex digest>``);
receivers check it with ``verify``. Email goes through ``smtplib`` on a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import hmac
import json
import logging
import smtplib
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any, Protocol

from conveyor.backends.base import OutboxClaimParams, OutboxEvent, OutboxSettle, OutboxStore
from conveyor.config import EmailTarget, NotificationsConfig, SmtpConfig, WebhookTarget
from conveyor.errors import InvalidInput
from conveyor.models import Task

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("conveyor.notify")

SIGNATURE_HEADER = "Conveyor-Signature"
EVENT_HEADER = "Conveyor-Event"
EVENT_ID_HEADER = "Conveyor-Event-Id"
MAX_CONNECTIONS = 16  # per notifier: a round's requests share kept-alive connections


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``Conveyor-Signature`` header value for ``body`` sent at ``timestamp``."""
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"


def verify(secret: str, body: bytes, header: str, *, tolerance: float = 300.0, now: float | None = None) -> bool:
    """Whether ``header`` signs exactly ``body`` with ``secret``, sent within
    ``tolerance`` seconds of ``now`` (an old signature replayed later fails)."""
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    try:
        ts = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance:
        return False
    expected = sign(secret, body, ts).split("v1=", 1)[1]
    return any(hmac.compare_digest(expected, given) for given in parts.get("v1", []))


class Store(OutboxStore, Protocol):
    """What a notifier needs of an engine: the outbox, and workflows to describe."""

    async def workflow_get(self, workflow_id: str) -> list[Task]: ...


@dataclass(frozen=True)
class _Target:
    """One configured destination, named as the outbox remembers it."""

    name: str
    spec: WebhookTarget | EmailTarget

    def wants(self, event: OutboxEvent) -> bool:
        spec = self.spec
        return (
            event.event in spec.events
            and (not spec.queues or event.queue in spec.queues)
            and (not spec.tasks or any(fnmatch.fnmatchcase(event.name, p) for p in spec.tasks))
        )


def _targets(cfg: NotificationsConfig) -> list[_Target]:
    """Every target under the name the outbox remembers (distinct: the config checks)."""
    return [_Target(t.key, t) for t in cfg.targets()]


class Notifier:
    """Delivers the outbox's events to the configured targets until ``stop()``."""

    def __init__(self, backend: Store, cfg: NotificationsConfig, *, http: httpx.AsyncClient | None = None) -> None:
        self.backend = backend
        self.cfg = cfg
        self.targets = _targets(cfg)
        self.delivered = 0  # events this notifier finished (every target has them)
        self._http = http
        self._own_http = http is None
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def subscribe(self) -> None:
        """Ask the engine to record the events the targets want (cluster-wide)."""
        await self.backend.outbox_subscribe(self.cfg.events())

    async def run(self) -> None:
        """Deliver rounds back to back while there is work, else wait ``poll_interval``."""
        try:
            while not self._stop.is_set():
                try:
                    busy = await self.deliver_once() >= self.cfg.batch
                except Exception:  # an engine outage or a bug: log it and keep going
                    log.exception("notification round failed; retrying")
                    busy = False
                if not busy:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), self.cfg.poll_interval)
        finally:
            if self._own_http and self._http is not None:
                await self._http.aclose()
                self._http = None

    async def deliver_once(self, now: float | None = None) -> int:
        """One round: claim due events, send them, settle them; returns how many were claimed."""
        events = await self.backend.outbox_claim(
            OutboxClaimParams(limit=self.cfg.batch, lease_seconds=self.cfg.lease_seconds, now=now)
        )
        if not events:
            return 0
        docs = await self._docs(events)
        done = {e.id: set(e.done) for e in events}
        sends: list[tuple[_Target, list[OutboxEvent]]] = []
        for target in self.targets:
            mine = [e for e in events if target.wants(e) and target.name not in e.done]
            size = target.spec.batch if isinstance(target.spec, WebhookTarget) else 1
            sends += [(target, mine[i : i + size]) for i in range(0, len(mine), size)]
        results = await asyncio.gather(*(self._send(target, chunk, docs) for target, chunk in sends))
        for (target, chunk), ok in zip(sends, results, strict=True):
            if ok:
                for event in chunk:
                    done[event.id].add(target.name)
        await self.backend.outbox_settle([self._settle(e, done[e.id]) for e in events])
        return len(events)

    def _settle(self, event: OutboxEvent, done: set[str]) -> OutboxSettle:
        missing = [t.name for t in self.targets if t.wants(event) and t.name not in done]
        if not missing:
            self.delivered += 1
            return OutboxSettle(event.id)
        if event.deliveries >= self.cfg.max_deliveries:
            log.error(
                "giving up on %s %s for task %s after %d rounds; not delivered to %s",
                event.event, event.id, event.task_id, event.deliveries, ", ".join(missing),
            )  # fmt: skip
            return OutboxSettle(event.id)
        delay = min(self.cfg.backoff_max, self.cfg.backoff * 2 ** (event.deliveries - 1))
        return OutboxSettle(event.id, retry_at=time.time() + delay, done=tuple(sorted(done)))

    async def _docs(self, events: list[OutboxEvent]) -> dict[str, dict[str, Any]]:
        """Each event as its JSON document, from the event alone (a workflow's adds its nodes)."""
        docs = {}
        for event in events:
            doc: dict[str, Any] = {
                "id": event.id,
                "event": event.event,
                "occurred_at": datetime.fromtimestamp(event.at, UTC).isoformat(),
                "task_id": event.task_id,
                "workflow_id": event.workflow_id,
                "queue": event.queue,
                "name": event.name,
                "state": event.state,
                "attempt": event.attempt,
                "result": None if event.result is None else json.loads(event.result),
                "error": None if event.error is None else json.loads(event.error),
            }
            if event.event == "workflow.finished" and event.workflow_id is not None:
                nodes = await self.backend.workflow_get(event.workflow_id)
                doc["workflow"] = {
                    "id": event.workflow_id,
                    "tasks": [{"id": t.id, "key": t.workflow_key, "name": t.name, "state": t.state} for t in nodes],
                }
            docs[event.id] = doc
        return docs

    async def _send(self, target: _Target, chunk: list[OutboxEvent], docs: dict[str, dict[str, Any]]) -> bool:
        try:
            if isinstance(target.spec, WebhookTarget):
                await self._post(target.spec, chunk, docs)
            else:
                (event,) = chunk
                await asyncio.to_thread(_send_mail, self.cfg.smtp, target.spec, event, _dumps(docs[event.id]))
        except Exception as exc:  # the receiver is down or refused: retried later
            what = chunk[0].event if len(chunk) == 1 else f"{len(chunk)} events"
            log.warning("notification %s %s to %s failed: %s", what, chunk[0].id, target.name, exc)
            return False
        return True

    async def _post(self, spec: WebhookTarget, chunk: list[OutboxEvent], docs: dict[str, dict[str, Any]]) -> None:
        if self._http is None:
            try:
                import httpx
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise InvalidInput("webhooks need httpx: pip install 'conveyor[notify]'") from exc
            self._http = httpx.AsyncClient(limits=httpx.Limits(max_connections=MAX_CONNECTIONS))
        if spec.batch == 1:
            (event,) = chunk
            body = _dumps(docs[event.id])
            kind, ids = event.event, event.id
        else:
            body = _dumps({"events": [docs[e.id] for e in chunk]})
            kind, ids = "batch", ",".join(e.id for e in chunk)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(spec.secret, body),
            EVENT_HEADER: kind,
            EVENT_ID_HEADER: ids,
            "User-Agent": "conveyor-notify",
        }
        response = await self._http.post(spec.url, content=body, headers=headers, timeout=spec.timeout)
        response.raise_for_status()


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, default=str, separators=(",", ":")).encode()


def _send_mail(smtp: SmtpConfig, spec: EmailTarget, event: OutboxEvent, body: bytes) -> None:
    msg = EmailMessage()
    msg["Subject"] = f"[conveyor] {event.event}: {event.name} {event.task_id}"
    msg["From"] = smtp.sender
    msg["To"] = ", ".join(spec.to)
    msg[EVENT_ID_HEADER] = event.id
    msg.set_content(json.dumps(json.loads(body), indent=2))
    cls = smtplib.SMTP_SSL if smtp.security == "tls" else smtplib.SMTP
    with cls(smtp.host, smtp.port, timeout=smtp.timeout) as client:
        if smtp.security == "starttls":
            client.starttls(context=ssl.create_default_context())
        if smtp.username:
            client.login(smtp.username, smtp.password or "")
        client.send_message(msg, from_addr=smtp.sender, to_addrs=list(spec.to))


async def run_notifier(backend: Store, cfg: NotificationsConfig, stop: asyncio.Event) -> None:
    """Subscribe, then deliver until ``stop`` is set (what workers and ``conveyor notifier`` run)."""
    notifier = Notifier(backend, cfg)
    await notifier.subscribe()
    log.info(
        "delivering notifications for %s to %s",
        ", ".join(sorted(cfg.events())), ", ".join(t.name for t in notifier.targets),
    )  # fmt: skip
    waiter = asyncio.create_task(stop.wait())
    runner = asyncio.create_task(notifier.run())
    await asyncio.wait([waiter, runner], return_when=asyncio.FIRST_COMPLETED)
    notifier.stop()
    waiter.cancel()
    await runner


__all__: Sequence[str] = ["Notifier", "SIGNATURE_HEADER", "run_notifier", "sign", "verify"]
