"""``conveyor export`` and ``conveyor import``, as real subprocesses: a SQLite store
exported, imported into another engine's store, and read back the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.backends.base import CancelParams
from tests.cli.test_cli import Cli


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
