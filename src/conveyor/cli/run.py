"""Long-running commands: ``worker``, ``notifier``, ``demo`` and ``bench``."""

import asyncio
from enum import StrEnum
from typing import Annotated

import typer

from conveyor.app import Conveyor
from conveyor.cli.common import (
    JsonOpt,
    LogFormatOpt,
    LogLevelOpt,
    UrlOpt,
    connect,
    load_app,
    split_csv,
    start_logging,
)
from conveyor.config import MAX_CONCURRENCY
from conveyor.errors import InvalidInput
from conveyor.worker import WorkerOptions, run_worker


class PoolKind(StrEnum):
    ASYNC = "async"
    THREADS = "threads"
    PROCESSES = "processes"


PANEL = "Running"


def register(cli: typer.Typer) -> None:
    cli.command(rich_help_panel=PANEL)(worker)
    cli.command(rich_help_panel=PANEL)(demo)
    cli.command(rich_help_panel=PANEL)(bench)
    cli.command(rich_help_panel=PANEL)(notifier)


def worker(
    app_path: Annotated[
        str, typer.Option("--app", help="MODULE:ATTR of your Conveyor app, e.g. myproj.tasks:app.", show_default=False)
    ],
    queues: Annotated[list[str] | None, typer.Option(help="Queues to serve, comma-separated (default: all).")] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Attempts run at once (default: config, 10).", min=1, max=MAX_CONCURRENCY)
    ] = None,
    pool: Annotated[PoolKind | None, typer.Option(help="Where attempts run (default: config, async).")] = None,
    tags: Annotated[list[str] | None, typer.Option(help="Tags this worker offers, comma-separated.")] = None,
    scheduler: Annotated[
        bool | None,
        typer.Option("--scheduler/--no-scheduler", help="Fire the app's periodic schedules (default: config, on)."),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve this process's Prometheus histograms on this port (/metrics).", min=1, max=65535),
    ] = None,
    notify: Annotated[
        bool,
        typer.Option("--notify/--no-notify", help="Deliver configured notifications from this worker."),
    ] = True,
    url: UrlOpt = None,
    log_format: LogFormatOpt = None,
    log_level: LogLevelOpt = "info",
) -> None:
    """Run a worker until SIGTERM/SIGINT; in-flight tasks finish, the rest go back to pending."""
    start_logging(log_format, log_level)
    app = load_app(app_path, url)
    metrics = None
    if metrics_port is not None:
        from conveyor.metrics import WorkerMetrics

        metrics = WorkerMetrics()
        try:
            metrics.serve(metrics_port)
        except OSError as exc:
            raise InvalidInput(f"cannot serve metrics on port {metrics_port}: {exc.strerror or exc}") from exc
    options = WorkerOptions(
        queues=split_csv(queues),
        tags=split_csv(tags),
        concurrency=concurrency,
        pool=pool.value if pool else None,
        app_path=app_path,
        install_signals=True,
        scheduler=scheduler,
        metrics=metrics,
        notify=notify,
    )
    asyncio.run(run_worker(app, options))


def notifier(
    off: Annotated[
        bool, typer.Option("--off", help="Stop recording events (clear the engine's subscriptions) and exit.")
    ] = False,
    url: UrlOpt = None,
    log_format: LogFormatOpt = None,
    log_level: LogLevelOpt = "info",
) -> None:
    """Deliver webhooks and email for task events until SIGTERM/SIGINT (workers also do this)."""
    start_logging(log_format, log_level)
    with connect(url) as app:
        cfg = app.settings.notifications
        if not off and not cfg.enabled:
            raise InvalidInput("no notification targets configured: add notifications.webhooks or .emails")
        asyncio.run(_notify(app, off))


async def _notify(app: Conveyor, off: bool) -> None:
    import signal

    from conveyor.notify import run_notifier

    backend = await app.backend()
    try:
        if off:
            await backend.outbox_subscribe(frozenset())
            return
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_notifier(backend, app.settings.notifications, stop)
    finally:
        await app.aclose()


def demo(
    workers: Annotated[int, typer.Option(help="Worker processes to start.", min=1, max=8)] = 2,
    concurrency: Annotated[int, typer.Option(help="Concurrency of each worker.", min=1, max=100)] = 8,
    url: Annotated[
        str | None,
        typer.Option("--url", help="Run on this backend instead of a temporary SQLite file (tasks stay there)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Run the whole system: workers, a mixed workload, live progress, a summary."""
    from conveyor.demo import DemoOptions, run_demo

    code = run_demo(DemoOptions(workers=workers, concurrency=concurrency, url=url, as_json=as_json))
    if code:
        raise typer.Exit(code)


def bench(
    runs: Annotated[int, typer.Option(help="Repeat each measurement; the median is reported.", min=1)] = 3,
    n: Annotated[int | None, typer.Option("-n", help="Tasks per throughput and claim-cost run.", min=1)] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Smoke-test sizes: seconds, rough figures.")] = False,
    only: Annotated[
        list[str] | None,
        typer.Option(help="Measurements to run, comma-separated: enqueue, throughput, latency, claim, memory."),
    ] = None,
    workers: Annotated[int, typer.Option(help="Worker processes.", min=1)] = 2,
    concurrency: Annotated[int | None, typer.Option(help="Concurrency of each worker.", min=1)] = None,
    check: Annotated[bool, typer.Option("--check", help="Exit 1 when a figure misses its target.")] = False,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure submit rate, throughput, latency, claim cost and memory on the chosen backend."""
    from conveyor.bench import run_cli  # heavy, and only needed here

    code = run_cli(
        url,
        json_out=as_json,
        runs=runs,
        n=n,
        quick=quick,
        only=split_csv(only),
        workers=workers,
        concurrency=concurrency,
        check=check,
    )
    if code:
        raise typer.Exit(code)
