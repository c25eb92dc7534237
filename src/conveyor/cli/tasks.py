"""Commands on single tasks: ``submit``, ``status``, ``tasks``, ``cancel``, ``retry``."""

import json
import sys
import time
from contextlib import AbstractContextManager, closing
from typing import Annotated, Any

import typer
from rich.live import Live

from conveyor.app import spec_from
from conveyor.backends.base import TaskFilter
from conveyor.cli.common import (
    ApiOpt,
    JsonOpt,
    Operations,
    TokenOpt,
    UrlOpt,
    err,
    load_app,
    open_client,
    out,
    parse_queue,
    parse_state,
    print_json,
    print_page,
)
from conveyor.cli.render import state_text, task_view
from conveyor.errors import InvalidInput
from conveyor.models import Task
from conveyor.task import SubmitOptions

IdArg = Annotated[str, typer.Argument(metavar="ID", help="Task id.", show_default=False)]
Repeated = list[str] | None


PANEL = "Tasks"


def register(cli: typer.Typer) -> None:
    cli.command(rich_help_panel=PANEL)(submit)
    cli.command(rich_help_panel=PANEL)(status)
    cli.command("tasks", rich_help_panel=PANEL)(list_tasks)
    cli.command(rich_help_panel=PANEL)(cancel)
    cli.command(rich_help_panel=PANEL)(retry)


def parse_args(raw: str) -> dict[str, Any]:
    """``--args`` must be a JSON object: tasks take keyword arguments only."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"--args is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput("--args: JSON nested too deeply") from None
    except ValueError:  # an integer past Python's digit limit: a number no task could use
        raise InvalidInput(f"--args: a number has more than {sys.get_int_max_str_digits()} digits") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"--args must be a JSON object of keyword arguments, got {type(value).__name__}")
    return value


def submit(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Task name, e.g. email.send.", show_default=False)],
    args: Annotated[str, typer.Option("--args", help="Keyword arguments as a JSON object.")] = "{}",
    priority: Annotated[str | None, typer.Option(help="0-10 or critical, high, normal, low.")] = None,
    queue: Annotated[str | None, typer.Option(help="Queue (default: the task's, else 'default').")] = None,
    delay: Annotated[float | None, typer.Option(help="Seconds to wait before it may run.", min=0)] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="A repeat submit returns the first task.")] = None,
    depends_on: Annotated[Repeated, typer.Option(help="Id of a task that must succeed first (repeatable).")] = None,
    label: Annotated[Repeated, typer.Option(help="Label, input to priority rules (repeatable).")] = None,
    requires: Annotated[Repeated, typer.Option(help="Worker tag the task needs (repeatable).")] = None,
    max_retries: Annotated[int | None, typer.Option(help="Retries after the first attempt.", min=0)] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds an attempt may run.", min=0)] = None,
    app_path: Annotated[
        str | None, typer.Option("--app", help="MODULE:ATTR of your app: refuses unknown names and bad args.")
    ] = None,
    url: UrlOpt = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit a task by name; prints its id."""
    kwargs = parse_args(args)
    opts = SubmitOptions(
        queue=queue,
        priority=priority,
        delay=delay,
        labels=tuple(label or ()),
        requires=tuple(requires or ()),
        depends_on=tuple(depends_on or ()),
        idempotency_key=idempotency_key,
        max_retries=max_retries,
        timeout=timeout,
    )
    spec_from(name, kwargs, opts)  # refuse bad input before touching the app or the backend
    if app_path:
        local = load_app(app_path, url)
        local.get_task(name)  # the registry knows the task, so refuse unknown names
        client: AbstractContextManager[Operations] = closing(local)
        if api:
            raise InvalidInput("--app checks names locally; it cannot be combined with --api")
    else:
        client = open_client(url, api, token)
    with client as app:
        handle = app.submit(name, kwargs, opts)
        if not handle.created:
            err.print(f"note: idempotency key {idempotency_key!r} already used: returning the existing task")
        if as_json:
            print_json(app.get(handle.id))
        else:
            out.print(handle.id)


def status(
    task_id: IdArg,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until the task finishes.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes with --watch.", min=0.05)] = 0.5,
    url: UrlOpt = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one task with its history (exit 1 if it does not exist)."""
    with open_client(url, api, token) as app:
        task = app.get(task_id)
        if watch and as_json:
            task = _wait_terminal(app, task, interval)
        elif watch:
            with Live(task_view(task), console=out, refresh_per_second=8) as live:
                while not task.terminal:
                    time.sleep(interval)
                    task = app.get(task_id)
                    live.update(task_view(task))
        if as_json:
            print_json(task)
        elif not watch:
            out.print(task_view(task))


def _wait_terminal(app: Operations, task: Task, interval: float) -> Task:
    while not task.terminal:
        time.sleep(interval)
        task = app.get(task.id)
    return task


def list_tasks(
    state: Annotated[str | None, typer.Option(help="Only tasks in this state.")] = None,
    queue: Annotated[str | None, typer.Option(help="Only this queue.")] = None,
    name: Annotated[str | None, typer.Option(help="Only this task name.")] = None,
    label: Annotated[str | None, typer.Option(help="Only tasks with this label.")] = None,
    limit: Annotated[int, typer.Option(help="Page size.", min=1, max=1000)] = 50,
    cursor: Annotated[str | None, typer.Option(help="The next cursor a previous page printed.")] = None,
    url: UrlOpt = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List tasks, newest first, a page at a time."""
    flt = TaskFilter(state=parse_state(state), queue=parse_queue(queue), name=name, label=label)
    with open_client(url, api, token) as app:
        page = app.list_tasks(flt, limit, cursor)
    print_page(page, as_json, "tasks")


def cancel(
    task_id: IdArg, url: UrlOpt = None, api: ApiOpt = None, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """Cancel a task that has not finished (exit 1 if it already has)."""
    with open_client(url, api, token) as app:
        task = app.cancel(task_id)
    _print_outcome(task, as_json)


def retry(
    task_id: IdArg, url: UrlOpt = None, api: ApiOpt = None, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """Replay a failed (dead-lettered) task: back to pending, attempts reset."""
    with open_client(url, api, token) as app:
        task = app.retry(task_id)
    _print_outcome(task, as_json)


def _print_outcome(task: Task, as_json: bool) -> None:
    if as_json:
        print_json(task)
    else:
        out.print(task.id, state_text(task.state))
