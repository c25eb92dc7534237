"""``conveyor export`` and ``conveyor import``, as real subprocesses: a SQLite store
exported, imported into another engine's store, and read back the same."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.backends.base import CancelParams, ClaimParams, Outcome, TaskFilter
from conveyor.cli import backup
from conveyor.errors import InvalidInput
from conveyor.states import State
from tests.cli.test_cli import Cli
from tests.contract.helpers import engine_urls, format_url
from tests.services import drop_store


def _fill(url: str) -> list[str]:
    app = Conveyor(url)
    try:
        ids = [app.submit("t.a", {"i": i}).id for i in range(5)]
        ids.append(app.submit("t.keyed", {}, None).id)
        app.run_sync(_cancel(app, ids[0]))
        return ids
    finally:
        app.close()


async def _cancel(app: Conveyor, task_id: str) -> None:
    await (await app.backend()).task_cancel(CancelParams(task_id=task_id))


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture
def target_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'restored.db'}"


def test_export_then_import_elsewhere_reads_back_the_same(cli: Cli, tmp_path: Path, target_url: str) -> None:
    ids = _fill(cli.url)
    dump = tmp_path / "backup.jsonl"
    out = cli("export", str(dump), "--json")
    assert json.loads(out.stdout) == {"exported": 6}
    lines = [json.loads(line) for line in dump.read_text().splitlines()]
    assert sorted(t["id"] for t in lines) == sorted(ids)
    assert {t["state"] for t in lines} == {"pending", "cancelled"}
    first = cli("import", str(dump), "--url", target_url, "--json")
    assert json.loads(first.stdout) == {"read": 6, "imported": 6, "skipped": 0}
    again = cli("import", str(dump), "--url", target_url, "--json")
    assert json.loads(again.stdout) == {"read": 6, "imported": 0, "skipped": 6}
    back = cli("export", "-", "--url", target_url)
    assert [json.loads(line) for line in back.stdout.splitlines()] == lines
    only = cli("export", "-", "--state", "cancelled")
    assert [json.loads(line)["id"] for line in only.stdout.splitlines()] == [ids[0]]


def test_a_bad_line_stores_nothing_and_says_where(cli: Cli, tmp_path: Path, target_url: str) -> None:
    _fill(cli.url)
    dump = tmp_path / "backup.jsonl"
    cli("export", str(dump))
    lines = dump.read_text().splitlines()
    dump.write_text("\n".join([*lines[:2], '{"id": "x"}', *lines[2:]]) + "\n")
    failed = cli("import", str(dump), "--url", target_url, code=2)
    assert "line 3" in failed.stderr and "not a task" in failed.stderr
    assert cli("export", "-", "--url", target_url).stdout == ""
    missing = cli("import", str(tmp_path / "nope.jsonl"), code=2)
    assert "cannot read" in missing.stderr
    unwritable = cli("export", str(tmp_path / "no-such-dir" / "out.jsonl"), code=2)
    assert "cannot write" in unwritable.stderr


BAD_ROWS = {
    "priority": ({"priority": 99}, "priority: Value error, invalid priority 99"),
    "empty id": ({"id": ""}, "id: must be a task id"),
    "made-up id": ({"id": "order-42"}, "id: must be a task id"),
    "name": ({"name": "bad name!"}, "name: String should match pattern"),
    "queue": ({"queue": "bad queue!"}, "queue: String should match pattern"),
    "label": ({"labels": [""]}, "labels: Value error"),
    "max_retries": ({"max_retries": 5000}, "max_retries: Input should be less than or equal to 1000"),
    "attempts": ({"attempts": 10**30}, "attempts: must be between 0 and 1001"),
    "running unleased": ({"state": "running"}, "state: a running task needs its worker_id and lease_expires_at"),
    "waiting on nothing": ({"state": "waiting"}, "depends_on: a waiting task needs the tasks it waits for"),
    "unknown parent": ({"state": "waiting", "depends_on": ["nope"]}, "depends_on: no task 'nope' in the file"),
    "negative timeout": ({"timeout": -5}, "timeout: must be a positive number"),
    "NaN in args": ({"args": {"k": math.nan}}, "args: holds NaN or Infinity"),
    "infinite timeout": ({"timeout": math.inf}, "timeout: must be a positive number"),
    "unknown field": ({"colour": "red"}, "unknown field(s) colour"),
}


@pytest.mark.parametrize("case", BAD_ROWS)
def test_an_invalid_row_refuses_the_whole_file_naming_its_row_and_field(
    cli: Cli, tmp_path: Path, target_url: str, case: str
) -> None:
    """Each was stored as given (or an OverflowError): a task no worker could ever run or finish."""
    _fill(cli.url)
    dump = tmp_path / "backup.jsonl"
    cli("export", str(dump))
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    change, message = BAD_ROWS[case]
    bad = rows[1]
    bad.update(change)
    dump.write_text("".join(json.dumps(row) + "\n" for row in rows))
    failed = cli("import", str(dump), "--url", target_url, code=2)
    assert failed.stderr.startswith("error: ") and failed.stderr.count("\n") == 1, failed.stderr
    assert f"task {bad['id']!r}: " in failed.stderr and message in failed.stderr, failed.stderr
    if case != "unknown parent":  # found once the whole file is read: it names the task, not a line
        assert "line 2" in failed.stderr
    assert cli("export", "-", "--url", target_url).stdout == ""


def test_an_id_on_two_lines_refuses_the_file(cli: Cli, tmp_path: Path, target_url: str) -> None:
    _fill(cli.url)
    dump = tmp_path / "backup.jsonl"
    cli("export", str(dump))
    rows = dump.read_text().splitlines()
    changed = json.loads(rows[0]) | {"queue": "elsewhere"}
    dump.write_text("\n".join([*rows, json.dumps(changed)]) + "\n")
    failed = cli("import", str(dump), "--url", target_url, code=2)
    assert f"line {len(rows) + 1}" in failed.stderr and "id: also on line 1" in failed.stderr, failed.stderr
    assert cli("export", "-", "--url", target_url).stdout == ""


async def test_a_waiting_task_may_wait_on_a_stored_parent(tmp_path: Path) -> None:
    source, target = Conveyor(f"sqlite:///{tmp_path / 's.db'}"), Conveyor(f"sqlite:///{tmp_path / 't.db'}")
    try:
        wf = source.workflow()
        wf.node("parent", "t.a", {})
        wf.node("child", "t.a", {}, depends_on=["parent"])
        await wf.submit_async()
        child, parent = (await source.list_tasks_async(TaskFilter(), 10)).items
        with pytest.raises(InvalidInput, match=f"task {child.id!r}: depends_on: no task {parent.id!r}"):
            await backup._import(target, [child])
        assert await backup._import(target, [parent]) == 1
        assert await backup._import(target, [child]) == 1
    finally:
        await source.aclose()
        await target.aclose()


@pytest.fixture(params=[engine for engine in engine_urls() if not engine.startswith("shards")])
def engine_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    url = format_url(engine_urls()[request.param], str(tmp_path))
    yield url
    drop_store(url)


async def test_an_import_in_pages_links_each_waiting_task_to_its_parent(tmp_path: Path, engine_url: str) -> None:
    """The export lists the child before its parent; one task per page still links them
    (PostgreSQL and Redis link a waiting task only to parents already stored)."""
    source, target = Conveyor(f"sqlite:///{tmp_path / 's.db'}"), Conveyor(engine_url)
    try:
        wf = source.workflow()
        wf.node("parent", "t.a", {})
        wf.node("child", "t.a", {}, depends_on=["parent"])
        await wf.submit_async()
        exported = (await source.list_tasks_async(TaskFilter(), 10)).items
        assert [t.state for t in exported] == [State.WAITING, State.PENDING]  # newest first
        assert await backup._import(target, exported, page=1) == 2
        backend = await target.backend()
        (claimed,) = (await backend.task_claim(ClaimParams("w1", 5, 30.0))).tasks
        assert await backend.task_finish_many([Outcome(claimed.id, claimed.lease_token, "complete")]) == [True]
        child = next(t for t in exported if t.state is State.WAITING)
        assert (await backend.task_get(child.id)).state is State.PENDING
    finally:
        await source.aclose()
        await target.aclose()
