"""Notifications end to end: a real HTTP receiver, a real SMTP server (aiosmtpd),
deliverers killed with SIGKILL mid-batch, and a receiver that is down for a while."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiosmtpd.controller import Controller

from conveyor import Conveyor
from conveyor.backends import make_backend
from conveyor.backends.base import Backend
from conveyor.config import NotificationsConfig
from conveyor.notify import EVENT_ID_HEADER, SIGNATURE_HEADER, Notifier, verify
from conveyor.states import FailureReason
from tests.contract.helpers import claim, complete, fail, submit
from tests.integration.support import ROOT, SpawnWorker, wait_until

SECRET = "hook-secret-0123456789"


@dataclass
class Receiver:
    """An HTTP endpoint that records every POST; answers 503 while ``down`` and
    sleeps ``delay`` seconds per request (so a batch is still in flight when killed)."""

    delay: float = 0.0
    down: bool = False
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def ids(self) -> set[str]:
        with self.lock:
            return {h[EVENT_ID_HEADER] for h, _ in self.requests}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real receivers do

        def do_POST(self) -> None:
            size = int(self.headers["Content-Length"])
            body = self.rfile.read(size)
            if len(body) < size:  # the sender died mid-request (SIGKILL): nothing was delivered
                self.close_connection = True
                return
            time.sleep(rec.delay)
            with rec.lock:
                if rec.down:
                    rec.refused += 1
                    self.send_response(503)
                else:
                    rec.requests.append(({k: v for k, v in self.headers.items()}, body))
                    self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


def notifications(receiver: Receiver, smtp_port: int, **extra: Any) -> dict[str, Any]:
    return {
        "webhooks": [
            {"name": "hook", "url": receiver.url, "secret": SECRET, "events": ["task.succeeded", "task.dead_lettered"]}
        ],
        "emails": [{"name": "ops", "to": ["ops@example.com"], "events": ["task.dead_lettered"]}],
        "smtp": {"host": "127.0.0.1", "port": smtp_port, "sender": "conveyor@example.com"},
        "batch": 5,
        "lease_seconds": 1.0,
        "poll_interval": 0.05,
        "backoff": 0.1,
        "backoff_max": 0.3,
        **extra,
    }


def start_notifier(config: Path, db_url: str, workdir: Path) -> subprocess.Popen[bytes]:
    log = (workdir / f"notifier-{time.monotonic_ns()}.log").open("wb")
    env = {"CONVEYOR_CONFIG": str(config), "CONVEYOR_URL": db_url, "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    return subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli.main", "notifier", "--log-format", "console"],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.mark.slow
def test_every_event_arrives_signed_though_the_deliverer_is_killed_mid_batch(
    client: Conveyor,
    db_url: str,
    tmp_path: Path,
    receiver: Receiver,
    mailbox: tuple[Mailbox, int],
    workers: SpawnWorker,
) -> None:
    box, smtp_port = mailbox
    config = tmp_path / "notify.yaml"
    config.write_text(yaml.safe_dump({"notifications": notifications(receiver, smtp_port)}))
    receiver.delay = 0.1  # 5 events per batch: a batch takes a while
    first = start_notifier(config, db_url, tmp_path)
    try:
        wait_until(lambda: "delivering notifications" in _logs(tmp_path), 20, "the notifier to subscribe")
        workers(concurrency=8, extra_args=["--no-notify"])
        ok = [client.submit("it.record", {"log": str(tmp_path / "log"), "tag": str(i)}).id for i in range(20)]
        dead = [client.submit("it.bad_input", {"counter": str(tmp_path / f"c{i}")}).id for i in range(3)]
        wait_until(lambda: len(receiver.ids()) >= 3, 30, "the first deliveries")
        first.send_signal(signal.SIGKILL)  # mid-batch: its leased events must come back
        first.wait(10)
        assert len(receiver.ids()) < 23, "the first notifier finished everything before it was killed"
    finally:
        if first.poll() is None:
            first.kill()
    # the second deliverer is a worker with notifications on (the default)
    workers(env={"CONVEYOR_CONFIG": str(config)})
    wait_until(lambda: len(receiver.ids()) == 23 and len(box.messages) >= 3, 40, "every event")
    with receiver.lock:
        requests = list(receiver.requests)
    bodies = [json.loads(body) for _, body in requests]
    got = {(b["event"], b["task_id"]) for b in bodies}
    assert got == {("task.succeeded", i) for i in ok} | {("task.dead_lettered", i) for i in dead}
    for headers, body in requests:
        assert verify(SECRET, body, headers[SIGNATURE_HEADER])
        assert not verify("forged-secret-forged", body, headers[SIGNATURE_HEADER])
        assert not verify(SECRET, body + b" ", headers[SIGNATURE_HEADER])
    tags = {task_id: str(i) for i, task_id in enumerate(ok)}
    for b in bodies:
        if b["event"] == "task.succeeded":
            assert (b["result"], b["error"]) == (tags[b["task_id"]], None)
        else:
            assert b["error"]["message"] == "this input can never work" and b["result"] is None
    mails = {m["Subject"].split()[-1] for rcpt, m in box.messages if rcpt == ["ops@example.com"]}
    assert mails == set(dead)
    wait_until(lambda: asyncio.run(_outbox_size(make_backend(db_url))) == 0, 10, "the outbox to empty")


def _logs(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.glob("notifier-*.log"))


async def _outbox_size(backend: Backend) -> int:
    await backend.open()
    try:
        return await backend.outbox_size()  # type: ignore[attr-defined, no-any-return]
    finally:
        await backend.close()


async def test_a_receiver_that_is_down_for_a_while_gets_everything_once_it_is_back(
    receiver: Receiver, mailbox: tuple[Mailbox, int], tmp_path: Path
) -> None:
    _, smtp_port = mailbox
    cfg = NotificationsConfig.model_validate(notifications(receiver, smtp_port, emails=[]))
    backend = make_backend(f"sqlite:///{tmp_path / 'down.db'}")
    await backend.open()
    notifier = Notifier(backend, cfg)  # type: ignore[arg-type]
    await notifier.subscribe()
    receiver.down = True
    for _ in range(6):
        await submit(backend)
    for claimed in await claim(backend, 6):
        outcome = complete(claimed) if claimed.id[-1] in "02468ace" else fail(claimed, FailureReason.PERMANENT_ERROR)
        await backend.task_finish_many([outcome])
    runner = asyncio.create_task(notifier.run())
    try:
        await asyncio.sleep(1.0)
        assert receiver.refused >= 6 and receiver.ids() == set()
        receiver.down = False
        deadline = time.monotonic() + 15
        while len(receiver.ids()) < 6 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(receiver.ids()) == 6
        while await backend.outbox_size() and time.monotonic() < deadline:  # type: ignore[attr-defined]
            await asyncio.sleep(0.05)  # the round that delivered them settles after the last answer
        assert await backend.outbox_size() == 0  # type: ignore[attr-defined]
    finally:
        notifier.stop()
        await runner
        await backend.close()


async def test_a_batching_webhook_gets_several_events_per_signed_request(
    receiver: Receiver, mailbox: tuple[Mailbox, int], tmp_path: Path
) -> None:
    _, smtp_port = mailbox
    settings = notifications(receiver, smtp_port, emails=[])
    settings["webhooks"][0]["batch"] = 4
    settings["batch"] = 10  # one round takes all six
    notifier_cfg = NotificationsConfig.model_validate(settings)
    backend = make_backend(f"sqlite:///{tmp_path / 'batch.db'}")
    await backend.open()
    try:
        notifier = Notifier(backend, notifier_cfg)  # type: ignore[arg-type]
        await notifier.subscribe()
        ids = [await submit(backend) for _ in range(6)]
        await backend.task_finish_many([complete(c) for c in await claim(backend, 6)])
        assert await notifier.deliver_once() == 6
        with receiver.lock:
            requests = list(receiver.requests)
        assert sorted(len(json.loads(body)["events"]) for _, body in requests) == [2, 4]
        for headers, body in requests:
            assert headers["Conveyor-Event"] == "batch"
            assert verify(SECRET, body, headers[SIGNATURE_HEADER])
            assert headers[EVENT_ID_HEADER] == ",".join(e["id"] for e in json.loads(body)["events"])
        got = sorted(e["task_id"] for _, body in requests for e in json.loads(body)["events"])
        assert got == sorted(ids)
        assert await backend.outbox_size() == 0  # type: ignore[attr-defined]
    finally:
        await backend.close()
