"""The real ``conveyor api`` process under uvicorn: smoke test, two instances on one file, CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from conveyor.client import Client
from conveyor.errors import Forbidden, TaskNotFound, Unauthorized
from tests.api.conftest import TOKENS, token_config

CONVEYOR = [sys.executable, "-m", "conveyor"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_for(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    return env | {"CONVEYOR_URL": url, "CONVEYOR_API__TOKENS": json.dumps(token_config())} | extra


@contextmanager
def api_process(url: str, cwd: Path) -> Iterator[str]:
    port = free_port()
    log = (cwd / f"api-{port}.log").open("w")  # a file, not a pipe: a full pipe would block the server
    proc = subprocess.Popen([*CONVEYOR, "api", "--port", str(port)], env=env_for(url), cwd=cwd, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code in (200, 503):
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"conveyor api did not start: {(cwd / log.name).read_text()[-2000:]}")
            time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()
        assert proc.returncode in (0, -15), Path(log.name).read_text()[-2000:]  # uvicorn re-raises SIGTERM


def test_real_server_smoke_and_python_client(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    with api_process(url, tmp_path) as base:
        r = httpx.post(f"{base}/tasks", json={"name": "smoke"}, headers={"Authorization": f"Bearer {TOKENS['submit']}"})
        assert r.status_code == 201 and r.headers["x-request-id"]
        with Client(base, TOKENS["admin"]) as client:
            handle = client.submit("email.send", {"to": "x"})
            assert handle.created and client.get(handle.id).args == {"to": "x"}
            assert client.cancel(handle.id).state == "cancelled"
            assert client.stats().counts["pending"] == 1
            assert client.list_tasks(limit=1).next_cursor
            with pytest.raises(TaskNotFound):
                client.get("nope")
        with Client(base, TOKENS["read"]) as reader, pytest.raises(Forbidden):
            reader.submit("email.send")
        with Client(base, "wrong") as anonymous, pytest.raises(Unauthorized):
            anonymous.stats()


def test_two_api_processes_on_one_sqlite_file_agree(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    with api_process(url, tmp_path) as a, api_process(url, tmp_path) as b:
        ca, cb = Client(a, TOKENS["admin"]), Client(b, TOKENS["admin"])
        try:
            ids = [(ca if i % 2 else cb).submit("t", {"i": i}).id for i in range(20)]
            key = ca.submit("t", opts=None).id
            assert cb.get(key).id == key
            assert ca.stats().counts == cb.stats().counts
            listed_a = [t.id for t in ca.list_tasks(limit=100).items]
            listed_b = [t.id for t in cb.list_tasks(limit=100).items]
            assert listed_a == listed_b and set(ids) <= set(listed_a)
            cb.cancel(ids[0])
            assert ca.get(ids[0]).state == "cancelled"
        finally:
            ca.close()
            cb.close()


def test_cli_talks_to_a_remote_api(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    with api_process(url, tmp_path) as base:
        env = env_for("sqlite:///must-not-be-used.db", CONVEYOR_API=base, CONVEYOR_TOKEN=TOKENS["admin"])
        env.pop("CONVEYOR_URL")

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*CONVEYOR, *args], check=False, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
            )

        submitted = run("submit", "email.send", "--args", '{"to": "a"}', "--json")
        assert submitted.returncode == 0, submitted.stderr
        task = json.loads(submitted.stdout)
        status = run("status", task["id"], "--json")
        assert json.loads(status.stdout)["id"] == task["id"]
        assert json.loads(run("tasks", "--json").stdout)[0]["id"] == task["id"]
        assert json.loads(run("stats", "--json").stdout)["counts"]["pending"] == 1
        assert run("cancel", task["id"]).returncode == 0
        again = run("cancel", task["id"])
        assert again.returncode == 1 and "error:" in again.stderr
        assert run("dlq", "purge", "--yes", "--json").returncode == 0
        denied = run("cancel", task["id"], "--token", TOKENS["read"])
        assert denied.returncode == 1 and "role" in denied.stderr
        paused = run("queues", "emails", "--pause", "--rate-limit", "5/s", "--json")
        assert paused.returncode == 0, paused.stderr
        assert json.loads(paused.stdout)["paused"] is True
        resumed = run("queues", "emails", "--resume", "--rate-limit", "none", "--json")
        assert json.loads(resumed.stdout)["paused"] is False
        bounded = run("queues", "emails", "--max-length", "7", "--json")
        assert bounded.returncode == 0, bounded.stderr
        assert json.loads(bounded.stdout)["max_length"] == 7
        listed = json.loads(run("queues", "--json").stdout)
        assert [q["paused"] for q in listed if q["name"] == "emails"] in ([], [False])
        unbounded = run("queues", "emails", "--max-length", "none", "--json")
        assert json.loads(unbounded.stdout)["max_length"] is None
        task_level = run("queues", "email.send", "--task", "--concurrency", "2")
        assert task_level.returncode == 2 and "--url" in task_level.stderr
        assert not (tmp_path / "must-not-be-used.db").exists()


def test_api_refuses_a_public_bind_without_tokens(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    r = subprocess.run(
        [*CONVEYOR, "api", "--host", "0.0.0.0"],
        check=False,
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert r.stderr.startswith("error: refusing to bind 0.0.0.0") and len(r.stderr.strip().splitlines()) == 1


def test_hash_token_prints_a_config_entry(tmp_path: Path) -> None:
    r = subprocess.run(
        [*CONVEYOR, "api", "hash-token", "s3cret", "--role", "admin"], check=False, capture_output=True, text=True
    )
    assert r.returncode == 0
    assert "sha256: " in r.stdout and "s3cret" not in r.stdout and "role: admin" in r.stdout


WORK_MODULE = """
from conveyor import Conveyor

app = Conveyor()


@app.task(name="e2e.add")
def add(x: int, y: int) -> int:
    return x + y
"""


def test_a_scrape_of_the_api_shows_what_a_separate_worker_ran(tmp_path: Path) -> None:
    """The operator's view end to end: tasks posted to ``conveyor api``, run by a
    ``conveyor worker`` process (no ``--metrics-port``), counted on the API's /metrics."""
    url = f"sqlite:///{tmp_path / 'e2e.db'}"
    (tmp_path / "e2e_tasks.py").write_text(WORK_MODULE)
    env = env_for(url, CONVEYOR_WORKER__METRICS_INTERVAL="0.2", PYTHONPATH=str(tmp_path))
    with api_process(url, tmp_path) as base:
        headers = {"Authorization": f"Bearer {TOKENS['admin']}"}
        log = (tmp_path / "worker.log").open("w")
        worker = subprocess.Popen(
            [*CONVEYOR, "worker", "--app", "e2e_tasks:app"], env=env, cwd=tmp_path, stdout=log, stderr=log
        )
        try:
            for i in range(4):
                assert (
                    httpx.post(
                        f"{base}/tasks", json={"name": "e2e.add", "args": {"x": i, "y": 1}}, headers=headers
                    ).status_code
                    == 201
                )
            later = httpx.post(f"{base}/tasks", json={"name": "e2e.add", "delay": 3600}, headers=headers).json()
            assert httpx.delete(f"{base}/tasks/{later['id']}", headers=headers).status_code == 200

            def scrape() -> str | None:
                text = httpx.get(f"{base}/metrics", headers=headers, timeout=5).text
                done = 'conveyor_task_duration_seconds_count{name="e2e.add",queue="default"} 4.0' in text
                return text if done else None

            deadline = time.monotonic() + 20
            while (text := scrape()) is None:
                assert worker.poll() is None and time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
                time.sleep(0.1)
            assert 'conveyor_attempts_total{name="e2e.add",queue="default",state="succeeded"} 4.0' in text
            assert 'conveyor_task_wait_seconds_count{queue="default"} 4.0' in text
            assert 'conveyor_tasks_finished_total{state="cancelled"} 1.0' in text
            assert "conveyor_tasks_submitted_total 5.0" in text
        finally:
            worker.terminate()
            worker.wait(timeout=30)
            log.close()
