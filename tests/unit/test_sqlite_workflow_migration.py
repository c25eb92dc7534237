"""Migration 0002 (workflows) upgrades a database created by 0001 without losing tasks."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from conveyor.backends.sqlfiles import load_migrations
from conveyor.backends.sqlite import SqliteBackend
from conveyor.backends.sqlite_ops import _statements


async def test_0002_adds_workflow_columns_to_an_existing_database(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE conveyor_migrations (name TEXT PRIMARY KEY NOT NULL, applied_at REAL NOT NULL)")
    name, sql = load_migrations("sqlite")[0]
    assert name == "0001_init"
    for statement in _statements(sql):
        conn.execute(statement)
    conn.execute("INSERT INTO conveyor_migrations VALUES (?, ?)", (name, time.time()))
    now = time.time()
    conn.execute(
        "INSERT INTO tasks (id, name, queue, priority, state, run_at, max_retries, retry, created_at, updated_at)"
        " VALUES ('old-1', 'legacy', 'default', 5, 'pending', ?, 3, '{}', ?, ?)",
        (now, now, now),
    )
    conn.close()

    backend = SqliteBackend(f"sqlite:///{path}")
    await backend.open()  # auto-migrates
    try:
        task = await backend.task_get("old-1")
        assert (task.name, task.workflow_id, task.workflow_key) == ("legacy", None, None)
        assert await backend.workflow_get("anything") == []
        assert await backend.migrate() == []
    finally:
        await backend.close()
    names = [row[0] for row in sqlite3.connect(path).execute("SELECT name FROM conveyor_migrations ORDER BY name")]
    assert names[:2] == ["0001_init", "0002_workflows"]
