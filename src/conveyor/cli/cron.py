"""Periodic schedules: ``conveyor cron list`` and ``conveyor scheduler``."""

import asyncio
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from conveyor.app import Conveyor
from conveyor.cli.common import (
    JsonOpt,
    LogFormatOpt,
    LogLevelOpt,
    UrlOpt,
    connect,
    load_app,
    out,
    print_json,
    start_logging,
)
from conveyor.models import to_dt
from conveyor.schedules import Schedule
from conveyor.worker.scheduler import Scheduler

PANEL = "Running"

cron = typer.Typer(help="Periodic schedules (cron expressions and intervals).", no_args_is_help=True)

AppOpt = Annotated[
    str | None,
    typer.Option("--app", help="MODULE:ATTR of your Conveyor app (its @app.periodic schedules).", show_default=False),
]


def register(cli: typer.Typer) -> None:
    cli.add_typer(cron, name="cron", rich_help_panel=PANEL)
    cli.command(rich_help_panel=PANEL)(scheduler)


def schedule_view(schedule: Schedule, now: float, count: int) -> dict[str, Any]:
    """The JSON shape of one schedule, with its next fire times."""
    data = schedule.model_dump(mode="json")
    data["next"] = [to_dt(t).isoformat() for t in schedule.next_ticks(now, count)]  # type: ignore[union-attr]
    return data


@cron.command("list")
def cron_list(
    app_path: AppOpt = None,
    count: Annotated[int, typer.Option("--next", help="How many upcoming fire times to show.", min=1, max=50)] = 3,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every schedule (from --app code and the config) with its next fire times (UTC)."""
    now = time.time()
    if app_path:
        views = _views(load_app(app_path, url), now, count)
    else:
        with connect(url) as app:
            views = _views(app, now, count)
    if as_json:
        print_json(views)
        return
    if not views:
        out.print("no schedules declared (use @app.periodic or the schedules: config section)")
        return
    table = Table(title=f"{len(views)} schedules", title_justify="left")
    for column in ("name", "when", "task", "queue", "catch up", "next (UTC)"):
        table.add_column(column, no_wrap=column in ("name", "when", "next (UTC)"))
    for v in views:
        when = v["cron"] or f"every {v['every']} s"
        nxt = "\n".join(t[:19].replace("T", " ") for t in v["next"])
        table.add_row(v["name"], when, v["task"], v["queue"] or "(task's)", v["catch_up"], nxt)
    out.print(table)


def _views(app: Conveyor, now: float, count: int) -> list[dict[str, Any]]:
    return [schedule_view(s, now, count) for s in sorted(app.schedules.values(), key=lambda s: s.name)]


def scheduler(
    app_path: Annotated[
        str, typer.Option("--app", help="MODULE:ATTR of your Conveyor app, e.g. myproj.tasks:app.", show_default=False)
    ],
    url: UrlOpt = None,
    log_format: LogFormatOpt = None,
    log_level: LogLevelOpt = "info",
) -> None:
    """Fire the app's schedules until SIGTERM/SIGINT (workers also do this unless --no-scheduler)."""
    start_logging(log_format, log_level)
    app = load_app(app_path, url)
    if not app.schedules:
        raise typer.BadParameter(f"{app_path} declares no schedules", param_hint="--app")
    asyncio.run(_run_scheduler(app))


async def _run_scheduler(app: Conveyor) -> None:
    import signal

    sched = Scheduler(app)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sched.stop)
    try:
        await sched.run()
    finally:
        await app.aclose()
