"""Backup and restore: ``conveyor export FILE`` and ``conveyor import FILE``.

An export is JSON lines, one task per line exactly as ``GET /tasks/{id}`` returns it
(state, history, result and all), newest first. ``import`` stores them with the
engine's ``task_restore``, on any engine: a SQLite export restores into PostgreSQL or
Redis. The whole file is read and checked before anything is stored, so a bad line
stores nothing; tasks already there are skipped, so an interrupted import can simply
be run again.

Each row must be a task Conveyor could have stored: what a submit checks (name,
queue, priority, labels, options), an id, attempts in range, a running task with its
worker and lease expiry (the reaper needs it), and a waiting task with parents, each
in the file or stored (else it would wait forever).
"""

import asyncio
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from conveyor.app import Conveyor, describe_validation
from conveyor.backends.base import Backend, ListParams, TaskFilter
from conveyor.cli.common import JsonOpt, UrlOpt, connect, err, parse_queue, parse_state, print_json
from conveyor.errors import InvalidInput
from conveyor.ids import ID_PATTERN
from conveyor.models import Task, TaskSpec
from conveyor.states import State

PANEL = "Operating"
PAGE = 1000  # tasks read, and restored, per engine call
MAX_ATTEMPTS = 1001  # max_retries is at most 1000, so its last retry is attempt 1001
#: Task fields a submit sets, checked by ``TaskSpec`` as a submit's are.
SUBMITTED = ("name", "queue", "priority", "labels", "requires", "depends_on", "idempotency_key", "max_retries")

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
    seen: dict[str, int] = {}  # id -> the line that holds it
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            task = Task.model_validate_json(line)
            unknown = sorted(set(json.loads(line)) - set(Task.model_fields))
        except ValidationError as exc:
            raise InvalidInput(f"{file}, line {number}: not a task: {describe_validation(exc)}") from exc
        try:
            if unknown:  # a typo, or another tool's file: nothing an export writes
                raise ValueError(f"unknown field(s) {', '.join(unknown)}")
            if task.id in seen:  # which of the two would be stored is not the file's to decide
                raise ValueError(f"id: also on line {seen[task.id]}")
            _check(task)
        except ValueError as exc:
            raise InvalidInput(f"{file}, line {number}: task {task.id!r}: {exc}") from exc
        seen[task.id] = number
        tasks.append(task)
    return tasks


def _check(task: Task) -> None:
    """Refuse a row no submit or transition could have made (``ValueError``, naming the field)."""
    if not ID_PATTERN.fullmatch(task.id):  # as Conveyor makes ids (pages use them as cursors)
        raise ValueError("id: must be a task id as Conveyor makes them (a lowercase UUID)")
    try:
        TaskSpec.model_validate({field: getattr(task, field) for field in SUBMITTED})
    except ValidationError as exc:
        raise ValueError(describe_validation(exc)) from None
    if task.timeout is not None and not 0 < task.timeout < math.inf:
        raise ValueError(f"timeout: must be a positive number of seconds, got {task.timeout}")
    for field in ("args", "result", "headers"):
        try:
            json.dumps(getattr(task, field), allow_nan=False)
        except ValueError:  # NaN or Infinity: no engine stores them as written (JSON has none)
            raise ValueError(f"{field}: holds NaN or Infinity, which JSON cannot carry") from None
    if not 0 <= task.attempts <= MAX_ATTEMPTS:
        raise ValueError(f"attempts: must be between 0 and {MAX_ATTEMPTS}, got {task.attempts}")
    if task.state is State.RUNNING and (task.worker_id is None or task.lease_expires_at is None):
        raise ValueError("state: a running task needs its worker_id and lease_expires_at")
    if task.state is State.WAITING and not task.depends_on:
        raise ValueError("depends_on: a waiting task needs the tasks it waits for")


async def _check_parents(backend: Backend, tasks: Sequence[Task]) -> None:
    """Refuse a waiting task whose parent is neither in the file nor stored: nothing
    would ever settle it. Other states' ``depends_on`` is history (parents may be purged)."""
    waiting = [t for t in tasks if t.state is State.WAITING]
    known = {t.id for t in tasks}
    wanted = sorted({parent for t in waiting for parent in t.depends_on} - known)
    for start in range(0, len(wanted), PAGE):
        ids = wanted[start : start + PAGE]
        found = await backend.task_list(ListParams(TaskFilter(ids=ids), limit=len(ids)))
        known.update(t.id for t in found.items)
    for task in waiting:
        unknown = [parent for parent in task.depends_on if parent not in known]
        if unknown:
            raise InvalidInput(f"task {task.id!r}: depends_on: no task {unknown[0]!r} in the file or stored")


async def _import(app: Conveyor, tasks: list[Task], page: int = PAGE) -> int:
    """Restore oldest first: a task's parents are older than it, so each page finds
    them stored (an export lists newest first) and links a waiting task to them."""
    ordered = sorted(tasks, key=lambda t: (t.created_at, t.id))
    try:
        backend = await app.backend()
        await _check_parents(backend, ordered)
        stored = 0
        for start in range(0, len(ordered), page):
            stored += await backend.task_restore(ordered[start : start + page])
        return stored
    finally:
        await app.aclose()
