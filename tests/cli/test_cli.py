"""The ``conveyor`` command line, run as a real subprocess against a temporary SQLite file."""

from __future__ import annotations

import http.server
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.cli.main import main
from tests.cli.helpers import COMMAND, clean_env

TASKS_MODULE = textwrap.dedent(
    """
    from conveyor import Conveyor, Permanent

    app = Conveyor()

    @app.task(name="t.double")
    def double(x: int) -> int:
        return x * 2

    @app.task(name="t.boom")
    def boom(n: int = 0) -> None:
        raise Permanent(f"boom {n}")
    """
)


class Cli:
    """Runs ``conveyor`` in ``folder`` with ``CONVEYOR_URL`` pointing at its own database."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.url = f"sqlite:///{folder / 'cli.db'}"
        self.env = clean_env(CONVEYOR_URL=self.url)

    def __call__(self, *args: str, code: int | None = 0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*COMMAND, *args],
            check=False,
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        if code is not None:
            assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)

    def submit(self, name: str, *args: str) -> str:
        return self("submit", name, *args).stdout.strip()


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture
def worker(cli: Cli) -> Iterator[subprocess.Popen[str]]:
    """A ``conveyor worker`` serving ``cli_tasks:app`` (a module in the test's folder)."""
    (cli.folder / "cli_tasks.py").write_text(TASKS_MODULE)
    cli("migrate")
    proc = subprocess.Popen(
        [*COMMAND, "worker", "--app", "cli_tasks:app", "--concurrency", "4"],
        cwd=cli.folder,
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def wait_for(url: str, ids: list[str], timeout: float = 20.0) -> None:
    """Wait (through the Python API) until every task is terminal."""
    app = Conveyor(url)
    try:
        deadline = time.monotonic() + timeout
        while not all(app.get(i).terminal for i in ids):
            assert time.monotonic() < deadline, [app.get(i).state for i in ids]
            time.sleep(0.05)
    finally:
        app.close()


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    return lines[0]


# --- help ------------------------------------------------------------------------------

COMMANDS = [
    ["submit"],
    ["status"],
    ["tasks"],
    ["cancel"],
    ["retry"],
    ["stats"],
    ["workers"],
    ["queues"],
    ["dlq", "list"],
    ["dlq", "replay"],
    ["dlq", "purge"],
    ["migrate"],
    ["worker"],
    ["demo"],
    ["bench"],
]


def test_help_lists_every_command(cli: Cli) -> None:
    out = cli("--help").stdout
    for cmd in {c[0] for c in COMMANDS}:
        assert cmd in out


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_and_url(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0  # in process: the same entry point, faster
    out = capsys.readouterr().out
    assert "Usage" in out
    assert "--url" in out


def test_python_dash_m_conveyor_runs_the_cli(cli: Cli) -> None:
    proc = subprocess.run([sys.executable, "-m", "conveyor", "--version"], capture_output=True, text=True, check=True)
    assert proc.stdout.startswith("conveyor ")


# --- happy paths ------------------------------------------------------------------------


def test_migrate_reports_applied_then_nothing(cli: Cli) -> None:
    assert cli.json("migrate")
    assert cli.json("migrate") == []
    assert "up to date" in cli("migrate").stdout


def test_submit_prints_the_id_and_status_json_is_the_task(cli: Cli) -> None:
    task_id = cli.submit("email.send", "--args", '{"to": "a@b.c"}')
    task = cli.json("status", task_id)
    assert task["id"] == task_id
    assert task["name"] == "email.send"
    assert task["args"] == {"to": "a@b.c"}
    assert task["state"] == "pending"
    assert task["history"][0]["state"] == "pending"
    panel = cli("status", task_id).stdout
    assert task_id in panel and "history" in panel


def test_submit_passes_every_option(cli: Cli) -> None:
    dep = cli.submit("job.first")
    task = cli.json(
        "submit", "job.second", "--priority", "high", "--queue", "q1", "--delay", "60",
        "--label", "a", "--label", "b", "--requires", "gpu", "--depends-on", dep,
        "--max-retries", "5", "--timeout", "9",
    )  # fmt: skip
    assert task["priority"] == 8 and task["band"] == "high"
    assert task["queue"] == "q1"
    assert task["labels"] == ["a", "b"]
    assert task["requires"] == ["gpu"]
    assert task["depends_on"] == [dep]
    assert task["max_retries"] == 5 and task["timeout"] == 9
    assert task["state"] == "waiting"
    assert cli.json("submit", "job.later", "--delay", "60", "--priority", "3")["state"] == "scheduled"


def test_idempotent_repeat_returns_the_first_task_and_says_so(cli: Cli) -> None:
    first = cli("submit", "job.once", "--idempotency-key", "k1")
    again = cli("submit", "job.once", "--idempotency-key", "k1")
    assert first.stdout == again.stdout
    assert "already used" in again.stderr
    assert "already used" not in first.stderr


def test_tasks_lists_filters_and_pages(cli: Cli) -> None:
    ids = [cli.submit("job.a"), cli.submit("job.a"), cli.submit("job.b", "--queue", "other")]
    page = cli("tasks", "--limit", "2", "--json")
    first = json.loads(page.stdout)
    assert [t["id"] for t in first] == ids[::-1][:2]  # newest first
    cursor = page.stderr.split("next cursor:")[1].strip()
    rest = cli.json("tasks", "--limit", "2", "--cursor", cursor)
    assert [t["id"] for t in rest] == [ids[0]]
    assert [t["id"] for t in cli.json("tasks", "--name", "job.a")] == ids[1::-1]
    assert [t["id"] for t in cli.json("tasks", "--queue", "other", "--state", "PENDING")] == [ids[2]]
    assert cli.json("tasks", "--state", "failed") == []
    table = cli("tasks", "--limit", "2").stdout
    assert ids[2] in table and f"--cursor {cursor}" in table


def test_cancel_then_cancel_again_fails_with_exit_1(cli: Cli) -> None:
    task_id = cli.submit("job.x")
    assert cli.json("cancel", task_id)["state"] == "cancelled"
    again = cli("cancel", task_id, code=1)
    assert "cancel" in one_error_line(again)
    assert "cancelled" in cli("status", task_id).stdout


def test_stats_queues_and_workers_json(cli: Cli) -> None:
    cli.submit("job.x", "--queue", "mail", "--priority", "critical")
    stats = cli.json("stats")
    assert stats["counts"]["pending"] == 1
    assert stats["dlq_size"] == 0
    queues = cli.json("queues")
    assert [(q["name"], q["counts"]["pending"], q["pending_by_band"]["high"]) for q in queues] == [("mail", 1, 1)]
    assert cli.json("workers") == []
    assert "no workers" in cli("workers").stdout
    assert "mail" in cli("stats").stdout and "mail" in cli("queues").stdout


def test_queue_max_length_set_at_run_time_refuses_submits_beyond_it(cli: Cli) -> None:
    info = cli.json("queues", "mail", "--max-length", "1")
    assert info["name"] == "mail" and info["max_length"] == 1
    cli.submit("job.x", "--queue", "mail")
    refused = cli("submit", "job.x", "--queue", "mail", code=1)
    assert "full" in one_error_line(refused)
    assert [q["max_length"] for q in cli.json("queues")] == [1]
    assert cli.json("queues", "mail", "--max-length", "none")["max_length"] is None
    cli.submit("job.x", "--queue", "mail")
    assert "--max-length" in one_error_line(cli("queues", "mail", "--max-length", "0", code=2))
    assert "--task" in one_error_line(cli("queues", "job.x", "--task", "--max-length", "3", code=2))


def test_queue_settings_print_what_patch_queues_returns_with_json(cli: Cli) -> None:
    """SPEC §8: ``--json`` prints the HTTP API's object, here ``PATCH /queues/{name}``'s
    ``QueueInfo``, whichever settings change; a task name's controls have no HTTP form."""
    cli.submit("job.x", "--queue", "mail")
    row = {"name", "counts", "pending_by_band", "paused", "max_length"}
    paused = cli.json("queues", "mail", "--pause", "--rate-limit", "5/s")
    assert set(paused) == row and paused["paused"] is True and paused["counts"]["pending"] == 1
    assert set(cli.json("queues", "mail", "--concurrency", "3", "--max-length", "9")) == row
    resumed = cli.json("queues", "mail", "--resume", "--rate-limit", "none", "--concurrency", "none")
    assert resumed["paused"] is False and resumed["max_length"] == 9  # a bound not named stays
    empty = cli.json("queues", "nothing-yet", "--pause")
    assert (empty["name"], empty["paused"], set(empty["counts"].values())) == ("nothing-yet", True, {0})
    assert cli.json("queues", "job.x", "--task", "--concurrency", "2")["kind"] == "task"
    assert "paused" in cli("queues", "mail", "--pause").stdout  # the table still shows the flow settings
    huge = cli("queues", "mail", "--resume", "--max-length", "3", "--concurrency", "9" * 23, code=2)
    assert "--concurrency" in one_error_line(huge) or "concurrency" in one_error_line(huge)
    assert [q["max_length"] for q in cli.json("queues") if q["name"] == "mail"] == [9]  # nothing half-written
    assert "invalid queue name" in one_error_line(cli("queues", "bad queue!", "--pause", code=2))


def test_worker_runs_tasks_and_dead_letters_can_be_replayed_and_purged(cli: Cli, worker: subprocess.Popen[str]) -> None:
    ok = cli.json("submit", "t.double", "--args", '{"x": 21}', "--app", "cli_tasks:app")
    booms = [cli.submit("t.boom", "--args", json.dumps({"n": n})) for n in range(3)]
    wait_for(cli.url, [ok["id"], *booms])
    assert cli.json("status", ok["id"])["result"] == 42
    (live,) = cli.json("workers")
    assert live["pid"] == worker.pid and live["state"] in ("idle", "busy")

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    assert worker.stderr is not None and "stopped" in worker.stderr.read()
    assert cli.json("workers")[0]["state"] == "offline"

    dead = cli.json("dlq", "list", "--name", "t.boom")
    assert sorted(t["id"] for t in dead) == sorted(booms)
    assert {t["failure_reason"] for t in dead} == {"permanent_error"}
    assert "permanent_error" in cli("dlq", "list").stdout
    assert cli.json("stats")["dlq_size"] == 3

    replayed = cli.json("retry", booms[0])
    assert (replayed["state"], replayed["attempts"]) == ("pending", 0)
    assert cli.json("dlq", "replay", "--id", booms[1]) == {"replayed": 1}
    assert cli.json("dlq", "purge", "--yes", "--name", "t.boom") == {"purged": 1}
    assert cli.json("dlq", "list") == []
    assert cli("status", booms[2], code=1).returncode == 1
    assert "not found" in cli("retry", booms[2], code=1).stderr


# --- bad input: one line on stderr, exit 2 (bad usage) or 1 (operation failed) ----------


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["submit", "x", "--args", "{bad"], 2, "not valid JSON"),
        (["submit", "x", "--args", "[1, 2]"], 2, "JSON object"),
        (["submit", "x", "--priority", "urgent"], 2, "invalid priority"),
        (["submit", "x", "--priority", "11"], 2, "between 0 and 10"),
        (["submit", "bad name"], 2, "name"),
        (["submit", "t.nope", "--app", "cli_tasks:app"], 2, "unknown task name"),
        (["submit", "t.double", "--args", '{"y": 1}', "--app", "cli_tasks:app"], 2, "invalid args"),
        (["submit", "x", "--depends-on", "01a208f7-0000-7000-8000-000000000000"], 2, "unknown task"),
        (["status", "01a208f7-0000-7000-8000-000000000000"], 1, "not found"),
        (["cancel", "no-such-id"], 1, "not found"),
        (["tasks", "--state", "bogus"], 2, "pending"),
        (["tasks", "--limit", "0"], 2, "--limit"),
        (["tasks", "--queue", "bad queue"], 2, "queue"),
        (["worker", "--app", "no_such_module:app"], 2, "no such module"),
        (["worker", "--app", "cli_tasks:nothing"], 2, "no attribute"),
        (["worker", "--app", "cli_tasks"], 2, "MODULE:ATTR"),
        (["worker", "--app", "cli_tasks:app", "--pool", "fibers"], 2, "--pool"),
        (["stats", "--url", "bogus://x"], 2, "unsupported backend URL"),
        (["submit", "x", "--args", '{"x": ' + "9" * 5001 + "}"], 2, "--args: a number has more than"),
        (["submit", "x", "--args", '{"x": ' + "[" * 2000 + "]" * 2000 + "}"], 2, "--args: JSON nested too deeply"),
        (["stats", "--url", "postgresql://"], 2, "invalid URL 'postgresql://': no host or database"),
        (["stats", "--url", "postgresql://u:p@[::1"], 2, "invalid URL"),
        (["stats", "--url", "postgresql://u@host:notaport/db"], 2, "invalid URL"),
        (["stats", "--url", "redis://host:99999/0"], 2, "invalid URL"),
        (["stats", "--url", "redis://127.0.0.1:6379/abc"], 2, "the database must be a number"),
        (["stats", "--api", "http://[::1"], 2, "invalid API URL"),
        (["stats", "--api", "notaurl"], 2, "invalid API URL"),
        (["stats", "--api", "ftp://x"], 2, "invalid API URL"),
        (["worker", "--app", "cli_tasks:app", "--concurrency", "99999999999"], 2, "10000"),
        (["worker", "--app", "../x:app"], 2, "not a dotted module name"),
        (["queues", "mail", "--rate-limit", "1/.s"], 2, "invalid rate limit '1/.s'"),
        (["dlq", "purge"], 2, "--yes"),
        (["status"], 2, "ID"),
        (["frobnicate"], 2, "frobnicate"),
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(cli: Cli, args: list[str], code: int, needle: str) -> None:
    (cli.folder / "cli_tasks.py").write_text(TASKS_MODULE)
    proc = cli(*args, code=code)
    assert needle in one_error_line(proc)
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        ("CONVEYOR_QUEUES", "{bad", "CONVEYOR_QUEUES: not valid JSON"),
        ("CONVEYOR_WORKER", "notjson", "CONVEYOR_WORKER: not valid JSON"),
        ("CONVEYOR_PRIORITY_RULES", "{", "CONVEYOR_PRIORITY_RULES: not valid JSON"),
        ("CONVEYOR_CONFIG", ".", "config file .: cannot read it"),
        ("CONVEYOR_CONFIG", "binary.yaml", "config file binary.yaml: not UTF-8 text"),
    ],
)
def test_bad_configuration_names_the_variable_or_file(cli: Cli, variable: str, value: str, needle: str) -> None:
    (cli.folder / "binary.yaml").write_bytes(b"\xff\xfe\x00url: x")
    cli.env[variable] = value
    assert one_error_line(cli("stats", code=2)).startswith(f"error: invalid configuration: {needle}")


def test_an_api_url_that_is_no_api_is_one_clear_line(cli: Cli) -> None:
    """A web page where the API should be (the dashboard's /ui, say) is named, not a JSON traceback."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html>not the API</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        line = one_error_line(cli("stats", "--api", f"http://127.0.0.1:{server.server_port}/ui", code=1))
    finally:
        server.shutdown()
        server.server_close()
    assert "answered text/html, not JSON" in line
