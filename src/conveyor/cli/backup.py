"""Backup and restore: ``conveyor export FILE`` and ``conveyor import FILE``.

An export is JSON lines, one task per line exactly as ``GET /tasks/{id}`` returns it
(state, history, result and all), newest first. ``import`` stores them with the
engine's ``task_restore``, on any engine: a SQLite export restores into PostgreSQL or
Redis. The whole file is read and checked before anything is stored, so a bad line
stores nothing; tasks already there are skipped, so an interrupted import can simply
be run again.
"""

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from conveyor.app import Conveyor, describe_validation
from conveyor.backends.base import TaskFilter
from conveyor.cli.common import JsonOpt, UrlOpt, connect, err, parse_queue, parse_state, print_json
from conveyor.errors import InvalidInput
from conveyor.models import Task

PANEL = "Operating"
PAGE = 1000  # tasks read, and restored, per engine call

FileArg = Annotated[Path, typer.Argument(help="The JSON lines file ('-' for stdout / stdin).", show_default=False)]


def register(cli: typer.Typer) -> None:
    cli.command("export", rich_help_panel=PANEL)(export_tasks)
    cli.command("import", rich_help_panel=PANEL)(import_tasks)


def export_tasks(
    file: FileArg,
    state: Annotated[str | None, typer.Option(help="Only tasks in this state.")] = None,
    queue: Annotated[str | None, typer.Option(help="Only tasks of this queue.")] = None,
    name: Annotated[str | None, typer.Option(help="Only tasks of this name.")] = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write every task (or those matching the filters) as JSON lines, newest first."""
    flt = TaskFilter(state=parse_state(state), queue=parse_queue(queue), name=name)
    with connect(url) as app:
        if str(file) == "-":
            count = asyncio.run(_export(app, flt, sys.stdout.write))
        else:
            try:
                handle = file.open("w", encoding="utf-8")
            except OSError as exc:
                raise InvalidInput(f"cannot write {file}: {exc.strerror or exc}") from exc
            with handle:
                count = asyncio.run(_export(app, flt, handle.write))
    if as_json:
        print_json({"exported": count})
    elif str(file) != "-":
        err.print(f"exported {count} tasks to {file}")


async def _export(app: Conveyor, flt: TaskFilter, write: Callable[[str], object]) -> int:
    count, cursor = 0, None
    try:
        while True:
            page = await app.list_tasks_async(flt, PAGE, cursor)
            for task in page.items:
                write(task.model_dump_json() + "\n")
            count += len(page.items)
            if page.next_cursor is None:
                return count
            cursor = page.next_cursor
    finally:
        await app.aclose()


def import_tasks(file: FileArg, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Store the tasks of an export as they were; tasks already stored are skipped."""
    tasks = _read(file)
    with connect(url) as app:
        stored = asyncio.run(_import(app, tasks))
    if as_json:
        print_json({"read": len(tasks), "imported": stored, "skipped": len(tasks) - stored})
    else:
        err.print(f"imported {stored} of {len(tasks)} tasks ({len(tasks) - stored} were already there)")


def _read(file: Path) -> list[Task]:
    try:
        lines = sys.stdin.readlines() if str(file) == "-" else file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InvalidInput(f"cannot read {file}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{file} is not UTF-8 text: {exc}") from exc
    tasks: list[Task] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            tasks.append(Task.model_validate_json(line))
        except ValidationError as exc:
            raise InvalidInput(f"{file}, line {number}: not a task: {describe_validation(exc)}") from exc
    return tasks


async def _import(app: Conveyor, tasks: list[Task], page: int = PAGE) -> int:
    """Restore oldest first: a task's parents are older than it, so each page finds
    them stored (an export lists newest first) and links a waiting task to them."""
    ordered = sorted(tasks, key=lambda t: (t.created_at, t.id))
    try:
        backend = await app.backend()
        stored = 0
        for start in range(0, len(ordered), page):
            stored += await backend.task_restore(ordered[start : start + page])
        return stored
    finally:
        await app.aclose()
