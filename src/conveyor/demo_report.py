"""The demo's closing summary: what happened to every task, computed from the tasks themselves."""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from conveyor.models import Task
from conveyor.priority import Band, band_of
from conveyor.states import State


@dataclass(slots=True)
class BandSummary:
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    wait_p50: float = 0.0


@dataclass(slots=True)
class Summary:
    """Counts per state and band, retries, dead letters, throughput and wait percentiles."""

    total: int
    states: dict[str, int]
    bands: dict[str, BandSummary]
    retries: int
    dlq: dict[str, dict[str, Any]]
    elapsed: float
    throughput: float
    wait_p50: float
    wait_p95: float
    worker_exit_codes: list[int] = field(default_factory=list)
    workflow: dict[str, Any] | None = None  # the demo's DAG: id, state, node states, result


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0-1); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def wait_seconds(task: Task) -> float | None:
    """Time from when the task could run to when its last attempt started."""
    if task.started_at is None:
        return None
    return max(0.0, (task.started_at - task.run_at).total_seconds())


def summarize(tasks: list[Task], started: float, worker_exit_codes: list[int]) -> Summary:
    waits = [w for t in tasks if (w := wait_seconds(t)) is not None]
    finished = [t.finished_at.timestamp() for t in tasks if t.finished_at and t.state != State.CANCELLED]
    elapsed = max(finished, default=started) - started
    return Summary(
        total=len(tasks),
        states={s.value: n for s in State if (n := sum(t.state == s for t in tasks))},
        bands={band.value: _band(tasks, band) for band in Band},
        retries=sum(max(0, t.attempts - 1) for t in tasks),
        dlq=_dead_letters(tasks),
        elapsed=round(elapsed, 3),
        throughput=round(len(finished) / elapsed, 3) if elapsed > 0 else 0.0,
        wait_p50=round(percentile(waits, 0.50), 3),
        wait_p95=round(percentile(waits, 0.95), 3),
        worker_exit_codes=worker_exit_codes,
    )


def _band(tasks: list[Task], band: Band) -> BandSummary:
    mine = [t for t in tasks if band_of(t.priority) == band]
    states = Counter(t.state for t in mine)
    waits = [w for t in mine if (w := wait_seconds(t)) is not None]
    return BandSummary(
        total=len(mine),
        succeeded=states[State.SUCCEEDED],
        failed=states[State.FAILED],
        cancelled=states[State.CANCELLED],
        wait_p50=round(percentile(waits, 0.5), 3),
    )


def _dead_letters(tasks: list[Task]) -> dict[str, dict[str, Any]]:
    """Failed tasks per failure reason, with one error message as an example."""
    out: dict[str, dict[str, Any]] = {}
    for t in tasks:
        if t.state != State.FAILED:
            continue
        entry = out.setdefault(str(t.failure_reason), {"count": 0, "example": ""})
        entry["count"] += 1
        if t.error and not entry["example"]:
            entry["example"] = f"{t.error.type}: {t.error.message}"
    return out


# --- output --------------------------------------------------------------------------


def print_summary(summary: Summary, console: Console, as_json: bool = False) -> None:
    if as_json:  # stdout gets the JSON alone; the live view went to stderr
        sys.stdout.write(json.dumps(asdict(summary), indent=2) + "\n")
        return
    console.print(_states_table(summary))
    console.print(_bands_table(summary))
    console.print(_dlq_table(summary))
    codes = ", ".join(str(c) for c in summary.worker_exit_codes)
    console.print(
        f"[bold]{summary.total}[/] tasks in {summary.elapsed:.1f} s: "
        f"[bold]{summary.throughput:.1f}[/] tasks/s, {summary.retries} retries, "
        f"wait p50 {summary.wait_p50 * 1000:.0f} ms, p95 {summary.wait_p95 * 1000:.0f} ms"
    )
    if summary.workflow is not None:
        console.print(_workflow_line(summary.workflow))
    console.print(f"workers stopped with SIGTERM: exit codes {codes}")


def _workflow_line(wf: dict[str, Any]) -> str:
    nodes = wf["nodes"]
    done = sum(state == "succeeded" for state in nodes.values())
    return (
        f"workflow {wf['id']}: [bold]{wf['state']}[/], {done}/{len(nodes)} nodes succeeded "
        f"(plan -> {len(nodes) - 2} fetches -> merge), merged result {wf['result']}"
    )


def _states_table(summary: Summary) -> Table:
    table = Table(title="tasks by state", title_justify="left")
    table.add_column("state")
    table.add_column("tasks", justify="right")
    for state, count in summary.states.items():
        table.add_row(state, str(count))
    return table


def _bands_table(summary: Summary) -> Table:
    table = Table(title="by priority band (higher bands run first)", title_justify="left")
    for col in ("band", "tasks", "succeeded", "failed", "cancelled", "wait p50"):
        table.add_column(col, justify="left" if col == "band" else "right")
    for name, b in summary.bands.items():
        table.add_row(name, str(b.total), str(b.succeeded), str(b.failed), str(b.cancelled), f"{b.wait_p50:.2f} s")
    return table


def _dlq_table(summary: Summary) -> Table:
    size = sum(d["count"] for d in summary.dlq.values())
    table = Table(title=f"dead-letter queue: {size} tasks", title_justify="left")
    for col in ("reason", "tasks", "example error"):
        table.add_column(col)
    for reason, d in sorted(summary.dlq.items()):
        table.add_row(reason, str(d["count"]), d["example"])
    return table
