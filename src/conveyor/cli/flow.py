"""Flow-control commands: ``explain ID``, ``limits``, and the settings ``queues NAME --pause ...`` applies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer
from rich.table import Table

from conveyor.cli.common import JsonOpt, UrlOpt, connect, out, print_json
from conveyor.cli.render import queues_table
from conveyor.errors import InvalidInput
from conveyor.features.flow import FlowControl, Kind, QueueUpdate
from conveyor.models import to_dt

PANEL = "Operations"
_OFF = ("none", "off", "")


def register(cli: typer.Typer) -> None:
    cli.command(rich_help_panel="Tasks")(explain)
    cli.command(rich_help_panel=PANEL)(limits)


def explain(
    task_id: Annotated[str, typer.Argument(help="The task id.")],
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Why a task is not running yet: parents, schedule, limits, breaker, tags, or its place in line."""
    with connect(url) as app:
        result = app.explain(task_id)
    if as_json:
        print_json(result)
        return
    out.print(result.message, markup=False, soft_wrap=True)
    fields = result.model_dump(mode="json", exclude={"task_id", "state", "message"}, exclude_defaults=True)
    for key, value in fields.items():
        out.print(f"  {key}: {value}", markup=False, soft_wrap=True)


def limits(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Flow controls stored in the engine: paused queues, rate and concurrency limits, breakers."""
    with connect(url) as app:
        controls = app.flow_controls()
    if as_json:
        print_json(controls)
    else:
        out.print(limits_table(controls) if controls else "no limits, pauses or breakers set")


def limits_table(controls: Sequence[FlowControl]) -> Table:
    table = Table(title="flow controls", title_justify="left")
    for column in ("kind", "name", "paused", "rate", "concurrency", "breaker"):
        table.add_column(column)
    for c in controls:
        breaker = ""
        if c.breaker_threshold is not None:
            breaker = f"{c.breaker.value} ({c.failures}/{c.breaker_threshold}, cooldown {c.breaker_cooldown:g}s)"
            opened = to_dt(c.opened_until)
            if c.breaker.value == "open" and opened is not None:
                breaker += f" until {opened:%H:%M:%S}"
        table.add_row(
            c.kind,
            c.name,
            "yes" if c.paused else "",
            c.rate_limit or "",
            "" if c.concurrency is None else str(c.concurrency),
            breaker,
        )
    return table


def queue_settings(
    name: str,
    *,
    task: bool,
    pause: bool,
    resume: bool,
    rate_limit: str | None,
    concurrency: str | None,
    reset_breaker: bool = False,
) -> QueueUpdate | None:
    """The update that ``conveyor queues NAME --pause ...`` asks for; ``None`` if none."""
    if pause and resume:
        raise InvalidInput("give --pause or --resume, not both")
    reset: set[str] = set()
    rate = None
    if rate_limit is not None:
        if rate_limit.strip().lower() in _OFF:
            reset.add("rate_limit")
        else:
            rate = rate_limit.strip()
    limit = None
    if concurrency is not None:
        if concurrency.strip().lower() in _OFF:
            reset.add("concurrency")
        elif not concurrency.strip().isdigit():
            raise InvalidInput(f"invalid --concurrency {concurrency!r}: expected a whole number >= 1, or 'none'")
        else:
            limit = int(concurrency)
    if reset_breaker:
        reset.add("breaker")
    paused = True if pause else (False if resume else None)
    if paused is None and rate is None and limit is None and not reset:
        return None
    kind: Kind = "task" if task else "queue"
    return QueueUpdate(name, kind, paused=paused, rate_limit=rate, concurrency=limit, reset=frozenset(reset))


def parse_bound(max_length: str | None) -> tuple[bool, int | None]:
    """``--max-length N`` or ``none``: (given, bound); ``none`` removes a bound set at run time."""
    if max_length is None:
        return False, None
    text = max_length.strip().lower()
    if text in _OFF:
        return True, None
    if not text.isdigit() or int(text) < 1:
        raise InvalidInput(f"invalid --max-length {max_length!r}: expected a whole number >= 1, or 'none'")
    return True, int(text)


def apply_queue_settings(url: str | None, update: QueueUpdate, as_json: bool) -> None:
    with connect(url) as app:
        control = app.flow_update(update)
    if as_json:
        print_json(control)
    else:
        out.print(limits_table([control]))


def apply_queue_update(
    url: str | None, name: str, update: QueueUpdate | None, bound: tuple[bool, int | None], as_json: bool
) -> None:
    """``conveyor queues NAME [--max-length N|none] [...]``: every change in one
    ``queue_update`` (what ``PATCH /queues`` does); prints the queue's row, so ``--json``
    prints what the API returns. ``bound``: whether ``--max-length`` was given, and its value."""
    change = update or QueueUpdate(name)
    given, max_length = bound
    with connect(url) as app:
        info = app.run_sync(
            app.queue_update_async(
                name,
                paused=change.paused,
                rate_limit=change.rate_limit,
                concurrency=change.concurrency,
                max_length=max_length,
                clear=[*change.reset, *(["max_length"] if given and max_length is None else [])],
            )
        )
    if as_json:
        print_json(info)
    else:
        out.print(queues_table([info]))
