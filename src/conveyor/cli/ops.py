"""Operator commands: ``stats``, ``workers``, ``queues``, ``dlq list|replay|purge``, ``migrate``."""

import sys
from typing import Annotated, Any

import typer

from conveyor.backends.base import TaskFilter
from conveyor.cli import flow
from conveyor.cli.common import (
    ApiOpt,
    JsonOpt,
    TokenOpt,
    UrlOpt,
    connect,
    open_client,
    out,
    parse_queue,
    print_json,
    print_page,
)
from conveyor.cli.render import queues_table, stats_view, workers_table
from conveyor.errors import InvalidInput
from conveyor.features.flow import QueueUpdate
from conveyor.states import State

QueueOpt = Annotated[str | None, typer.Option(help="Only dead letters of this queue.")]
NameOpt = Annotated[str | None, typer.Option(help="Only dead letters of this task name.")]

dlq = typer.Typer(help="The dead-letter queue: failed tasks, to inspect, replay or purge.", no_args_is_help=True)


PANEL = "Operations"


def register(cli: typer.Typer) -> None:
    cli.command(rich_help_panel=PANEL)(stats)
    cli.command(rich_help_panel=PANEL)(workers)
    cli.command(rich_help_panel=PANEL)(queues)
    cli.add_typer(dlq, name="dlq", rich_help_panel=PANEL)
    cli.command(rich_help_panel=PANEL)(migrate)


def stats(url: UrlOpt = None, api: ApiOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Counts per state and queue, throughput, workers, open breakers."""
    with open_client(url, api, token) as app:
        result = app.stats()
    if as_json:
        print_json(result)
    else:
        out.print(stats_view(result))


def workers(url: UrlOpt = None, api: ApiOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Registered workers and their state (idle, busy, stopping, offline)."""
    with open_client(url, api, token) as app:
        result = app.workers()
    if as_json:
        print_json(result)
    else:
        out.print(workers_table(result, out.width) if result else "no workers registered")


def queues(
    name: Annotated[str | None, typer.Argument(help="A queue (or with --task, a task name) to change.")] = None,
    pause: Annotated[bool, typer.Option("--pause", help="Stop claims from it, cluster-wide.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Let claims take from it again.")] = False,
    rate_limit: Annotated[str | None, typer.Option(help="Claims at most, e.g. 100/s, 5/m; 'none' clears.")] = None,
    concurrency: Annotated[str | None, typer.Option(help="Running tasks at most; 'none' clears.")] = None,
    max_length: Annotated[
        str | None,
        typer.Option(help="Unfinished tasks at most (submits beyond: QueueFull); 'none' clears (back to config)."),
    ] = None,
    task: Annotated[bool, typer.Option("--task", help="NAME is a task name, not a queue.")] = False,
    reset_breaker: Annotated[bool, typer.Option("--reset-breaker", help="Close the task's breaker.")] = False,
    url: UrlOpt = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Depth of each queue per state and ready work per band; with NAME and options,
    pause, resume or limit that queue (or task name) at run time, cluster-wide."""
    if name is not None:
        update = flow.queue_settings(
            name,
            task=task,
            pause=pause,
            resume=resume,
            rate_limit=rate_limit,
            concurrency=concurrency,
            reset_breaker=reset_breaker,
        )
        bound_given, bound = flow.parse_bound(max_length)
        if update is None and not bound_given:
            raise InvalidInput("nothing to change: give --pause, --resume, --rate-limit, --concurrency or --max-length")
        if bound_given and task:
            raise InvalidInput("--max-length bounds a queue, not a task name: drop --task")
        if api:
            _remote_queue_update(api, token, name, update, as_json, (bound_given, bound))
        elif bound_given or (as_json and update is not None and update.kind == "queue"):
            flow.apply_queue_update(url, name, update, (bound_given, bound), as_json)
        else:  # a task name's controls, or a queue's shown as its flow settings
            assert update is not None
            flow.apply_queue_settings(url, update, as_json)
        return
    with open_client(url, api, token) as app:
        result = app.queues()
    if as_json:
        print_json(result)
    else:
        out.print(queues_table(result) if result else "no queues yet")


def _remote_queue_update(
    api: str,
    token: str | None,
    name: str,
    update: QueueUpdate | None,
    as_json: bool,
    bound: tuple[bool, int | None],
) -> None:
    """``PATCH /queues/{name}`` for ``conveyor queues NAME ... --api``: the API changes queues only."""
    change = update or QueueUpdate(name)
    if change.kind != "queue" or "breaker" in change.reset:
        raise InvalidInput("--task and --reset-breaker change task-name controls: use --url (the API changes queues)")
    changes: dict[str, Any] = dict.fromkeys(sorted(change.reset))
    for field in ("paused", "rate_limit", "concurrency"):
        if getattr(change, field) is not None:
            changes[field] = getattr(change, field)
    if bound[0]:
        changes["max_length"] = bound[1]
    from conveyor.client import Client

    with Client(api, token) as client:
        info = client.queue_update(name, changes)
    if as_json:
        print_json(info)
    else:
        out.print(queues_table([info]))


@dlq.command("list")
def dlq_list(
    queue: QueueOpt = None,
    name: NameOpt = None,
    limit: Annotated[int, typer.Option(help="Page size.", min=1, max=1000)] = 50,
    cursor: Annotated[str | None, typer.Option(help="The next cursor a previous page printed.")] = None,
    url: UrlOpt = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List dead letters (failed tasks) with their failure reason and error."""
    flt = TaskFilter(state=State.FAILED, queue=parse_queue(queue), name=name)
    with open_client(url, api, token) as app:
        page = app.list_tasks(flt, limit, cursor)
    print_page(page, as_json, "dead letters", dlq=True)


@dlq.command("replay")
def dlq_replay(
    queue: QueueOpt = None,
    name: NameOpt = None,
    ids: Annotated[list[str] | None, typer.Option("--id", help="Replay this task (repeatable).")] = None,
    url: UrlOpt = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Send matching dead letters back to pending with attempts reset (all if no filter)."""
    flt = TaskFilter(queue=parse_queue(queue), name=name, ids=ids or None)
    with open_client(url, api, token) as app:
        count = app.dlq_replay(flt)
    if as_json:
        print_json({"replayed": count})
    else:
        out.print(f"replayed {count} dead letters")


@dlq.command("purge")
def dlq_purge(
    queue: QueueOpt = None,
    name: NameOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    url: UrlOpt = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete matching dead letters for good (all if no filter)."""
    flt = TaskFilter(queue=parse_queue(queue), name=name)
    if not yes:
        _confirm_purge(queue, name)
    with open_client(url, api, token) as app:
        count = app.dlq_purge(flt)
    if as_json:
        print_json({"purged": count})
    else:
        out.print(f"purged {count} dead letters")


def _confirm_purge(queue: str | None, name: str | None) -> None:
    if not sys.stdin.isatty():
        raise InvalidInput("refusing to purge without confirmation: pass --yes")
    scope = " ".join(f"{k}={v}" for k, v in (("queue", queue), ("name", name)) if v) or "ALL"
    if not typer.confirm(f"Delete {scope} dead letters for good?"):
        raise typer.Exit(1)


def migrate(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Create or upgrade the schema (worker and api also do it unless auto_migrate is off)."""
    with connect(url, auto_migrate=False) as app:  # so the migrations applied are reported
        applied = app.migrate()
    if as_json:
        print_json(applied)
    elif applied:
        out.print("applied: " + ", ".join(applied))
    else:
        out.print("schema is up to date")
