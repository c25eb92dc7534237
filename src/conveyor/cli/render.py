"""Rich views of tasks, queues, workers and stats: presentation only, no decisions."""

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from conveyor.models import QueueInfo, Stats, Task, WorkerInfo
from conveyor.states import State

T = TypeVar("T")
Column = tuple[str, Callable[[T], "str | Text"], bool]  # header, cell, shown

STATE_STYLES: dict[str, str] = {
    State.WAITING: "grey62",
    State.SCHEDULED: "cyan",
    State.PENDING: "blue",
    State.RUNNING: "yellow",
    State.RETRYING: "magenta",
    State.SUCCEEDED: "green",
    State.FAILED: "bold red",
    State.CANCELLED: "dim",
    "idle": "green",
    "busy": "yellow",
    "stopping": "magenta",
    "offline": "dim",
}


def state_text(state: str) -> Text:
    return Text(str(state), style=STATE_STYLES.get(state, ""))


def when(dt: datetime | None) -> str:
    """Local time to the millisecond; blank when unset."""
    if dt is None:
        return ""
    return dt.astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def short_json(value: Any, width: int = 60) -> str:
    text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def task_view(task: Task) -> RenderableType:
    """``conveyor status``: the task's fields, its error, and its history."""
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold")
    fields.add_column()
    for label, value in _task_rows(task):
        fields.add_row(label, value)
    parts: list[RenderableType] = [fields]
    if task.error is not None:
        parts.append(Text(f"\n{task.error.type}: {task.error.message}", style="red"))
    parts.append(_history_table(task))
    return Panel(Group(*parts), title=f"task {task.id}", title_align="left", expand=False)


def _task_rows(task: Task) -> list[tuple[str, str | Text]]:
    rows: list[tuple[str, str | Text]] = [
        ("name", task.name),
        ("state", state_text(task.state)),
        ("queue", task.queue),
        ("priority", f"{task.priority} ({task.band})"),
        ("attempts", f"{task.attempts} of {task.max_retries + 1}"),
        ("args", short_json(task.args, 100)),
        ("run at", when(task.run_at)),
        ("created", when(task.created_at)),
        ("started", when(task.started_at)),
        ("finished", when(task.finished_at)),
    ]
    optional: list[tuple[str, Any]] = [
        ("labels", ", ".join(task.labels)),
        ("requires", ", ".join(task.requires)),
        ("depends on", ", ".join(task.depends_on)),
        ("idempotency key", task.idempotency_key),
        ("timeout", f"{task.timeout:g} s" if task.timeout else None),
        ("worker", task.worker_id),
        ("lease until", when(task.lease_expires_at)),
        ("failure reason", task.failure_reason),
        ("result", short_json(task.result, 100) if task.state == State.SUCCEEDED else None),
    ]
    rows.extend((label, str(value)) for label, value in optional if value)
    return rows


def _history_table(task: Task) -> Table:
    table = Table(title="history", title_justify="left", box=None, padding=(0, 1))
    for col in ("at", "state", "transition", "worker", "reason"):
        table.add_column(col)
    for h in task.history:
        table.add_row(when(h.at), state_text(h.state), h.transition, h.worker_id or "", h.reason or "")
    return table


def tasks_table(tasks: Sequence[Task], title: str | None = None, dlq: bool = False, width: int = 120) -> Table:
    """A listing, one row per task. Below 100 columns only the essential columns show."""
    wide = width >= 100
    columns: list[Column[Task]] = [
        ("id", lambda t: t.id, True),
        ("name", lambda t: t.name, True),
        ("queue", lambda t: t.queue, wide),
        ("prio", lambda t: str(t.priority), wide),
        ("state", lambda t: state_text(t.state), not dlq),
        ("tries", lambda t: str(t.attempts), True),
        ("updated", lambda t: clock(t.updated_at), wide),
        ("reason", lambda t: str(t.failure_reason or ""), dlq),
        ("error", lambda t: f"{t.error.type}: {t.error.message}" if t.error else "", dlq and wide),
        ("args", lambda t: short_json(t.args, 80), wide and not dlq),
    ]
    return grid(title, columns, tasks)


def grid(title: str | None, columns: Sequence[Column[T]], items: Sequence[T]) -> Table:
    """A borderless table of the shown columns; ids are never cut, so they can be copied."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    shown = [(header, cell) for header, cell, keep in columns if keep]
    rows = [[cell(item) for _, cell in shown] for item in items]
    for i, (header, _) in enumerate(shown):
        id_width = max((len(str(row[i])) for row in rows), default=0) if header == "id" else None
        table.add_column(
            header,
            no_wrap=True,
            overflow="ellipsis",
            min_width=id_width,
            ratio=1 if header in ("error", "args") else None,
        )
    for row in rows:
        table.add_row(*row)
    return table


def clock(dt: datetime) -> str:
    """Time of day for today's times, else month-day and time: short enough for tables."""
    local = dt.astimezone()
    return local.strftime("%H:%M:%S" if local.date() == datetime.now().date() else "%m-%d %H:%M")


def workers_table(workers: Sequence[WorkerInfo], width: int = 120) -> Table:
    """One row per registered worker; ``active`` is running attempts over concurrency."""
    wide = width >= 100
    columns: list[Column[WorkerInfo]] = [
        ("id", lambda w: w.id, True),
        ("state", lambda w: state_text(w.state), True),
        ("host", lambda w: w.host, wide),
        ("pid", lambda w: str(w.pid), wide),
        ("queues", lambda w: ",".join(w.queues) or "*", True),
        ("tags", lambda w: ",".join(w.tags), wide),
        ("pool", lambda w: w.pool, wide),
        ("active", lambda w: f"{w.active}/{w.concurrency}", True),
        ("done", lambda w: str(w.processed), True),
        ("heartbeat", lambda w: clock(w.last_heartbeat_at), True),
    ]
    return grid("workers", columns, workers)


def queues_table(queues: Sequence[QueueInfo]) -> Table:
    """Counts per state (only the states some queue has), ready work per band, limits."""
    shown = [s for s in State if any(q.counts.get(s.value) for q in queues)]
    table = Table(title="queues", title_justify="left")
    table.add_column("queue")
    for state in shown:
        table.add_column(state.value, justify="right", style=STATE_STYLES[state])
    table.add_column("ready h/m/l", justify="right")
    table.add_column("max", justify="right")
    for q in queues:
        band = q.pending_by_band
        table.add_row(
            q.name + (" (paused)" if q.paused else ""),
            *(str(q.counts.get(s.value, 0)) for s in shown),
            f"{band.get('high', 0)}/{band.get('medium', 0)}/{band.get('low', 0)}",
            str(q.max_length or ""),
        )
    return table


def stats_view(stats: Stats) -> RenderableType:
    """``conveyor stats``: totals per state, throughput, workers, then queues."""
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    counts = "  ".join(f"{s.value} {stats.counts.get(s.value, 0)}" for s in State)
    workers = "  ".join(f"{k} {v}" for k, v in sorted(stats.workers.items())) or "none"
    summary.add_row("tasks", counts)
    summary.add_row("dead letters", str(stats.dlq_size))
    summary.add_row("finished (last minute)", str(stats.finished_last_minute))
    summary.add_row("throughput", f"{stats.throughput_per_second:.1f} tasks/s")
    summary.add_row("workers", workers)
    summary.add_row("open breakers", ", ".join(stats.open_breakers) or "none")
    return Group(summary, queues_table(stats.queues)) if stats.queues else summary
