"""Schedules fired by real processes: two ``conveyor scheduler`` subprocesses and a
worker's own scheduler loop fire each tick exactly once; ``cron list`` shows them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from conveyor import Conveyor
from conveyor.backends.base import TaskFilter
from conveyor.worker import Worker, WorkerOptions
from tests.integration.support import ROOT, fast_settings, wait_for

CRON_APP = "tests.integration.cron_app:app"


def _env(url: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    return {**clean, "CONVEYOR_URL": url, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def _conveyor(*args: str) -> list[str]:
    return [sys.executable, "-m", "conveyor.cli.main", *args]


def test_two_scheduler_processes_fire_each_tick_exactly_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cron.db'}"
    client = Conveyor(url)
    client.migrate()
    procs = []
    try:
        for i in range(2):
            with (tmp_path / f"sched-{i}.log").open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        _conveyor("scheduler", "--app", CRON_APP),
                        env=_env(url),
                        cwd=tmp_path,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            beats = client.list_tasks(TaskFilter(queue="cron"), limit=1000).items
            if len(beats) >= 4:
                break
            assert all(p.poll() is None for p in procs), (tmp_path / "sched-0.log").read_text()
            time.sleep(0.1)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(15) for p in procs]
        logs = "\n".join(log.read_text() for log in tmp_path.glob("sched-*.log"))
        assert codes == [0, 0], logs
        beats = client.list_tasks(TaskFilter(queue="cron"), limit=1000).items
        keys = Counter(t.idempotency_key for t in beats)
        assert len(keys) >= 4 and set(keys.values()) == {1}, keys
        ticks = sorted(int(k.rsplit(":", 1)[1]) for k in keys if k)
        assert ticks == list(range(ticks[0], ticks[0] + len(ticks))), "one task per second, no tick skipped"
        assert "fired" in logs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        client.close()


async def test_workers_fire_schedules_unless_disabled(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    app = Conveyor(settings=fast_settings(url))

    @app.periodic(every=1, name="beat", task_name="beat", queue="beats", catch_up="none")
    def beat() -> str:
        return "beat"

    workers = [Worker(app, WorkerOptions(queues=["beats"])) for _ in range(2)]
    silent = Worker(app, WorkerOptions(queues=["other"], scheduler=False))
    runs = [asyncio.create_task(w.run()) for w in [*workers, silent]]
    try:

        async def two_done() -> bool:
            page = await app.list_tasks_async(TaskFilter(queue="beats", state="succeeded"))  # type: ignore[arg-type]
            return len(page.items) >= 2

        await wait_for(two_done, 15, what="two scheduled tasks to run")
    finally:
        for w in [*workers, silent]:
            w.stop()
        await asyncio.gather(*runs)
    tasks = (await app.list_tasks_async(TaskFilter(queue="beats"), limit=1000)).items
    assert set(Counter(t.idempotency_key for t in tasks).values()) == {1}
    await app.aclose()


def test_cron_list_shows_each_schedule_with_its_next_fire_times(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'list.db'}"
    run = subprocess.run(
        _conveyor("cron", "list", "--app", CRON_APP, "--json", "--next", "2"),
        env=_env(url),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    views = json.loads(run.stdout)
    assert [v["name"] for v in views] == ["heartbeat", "report"]
    report = views[1]
    assert (report["cron"], report["args"], report["catch_up"]) == ("*/5 * * * *", {"region": "eu"}, "latest")
    assert len(report["next"]) == 2 and all(t.endswith("+00:00") for t in report["next"])
    table = subprocess.run(
        _conveyor("cron", "list", "--app", CRON_APP),
        env={**_env(url), "COLUMNS": "160"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert table.returncode == 0, table.stderr
    assert "heartbeat" in table.stdout and "every 1 s" in table.stdout and "*/5 * * * *" in table.stdout
    bad = subprocess.run(
        _conveyor("cron", "list"),
        env={**_env(url), "CONVEYOR_SCHEDULES": '{"x": {"cron": "nope", "task": "t"}}'},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "invalid cron expression" in bad.stderr
