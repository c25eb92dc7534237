"""Tasks for the flow-control worker tests, with their limits declared in code.

Each task records its own start and end times in a file named by its arguments, so
the test can check what the worker subprocesses actually ran, and when.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from conveyor import Conveyor

RATE = "10/s"
CONCURRENCY = 2


def stamp(folder: str, key: str, seconds: float = 0.0) -> str:
    """Write ``<key>`` holding the start and end times of this execution."""
    start = time.time()
    if seconds:
        time.sleep(seconds)
    Path(folder, key).write_text(f"{start} {time.time()} {os.getpid()}\n")
    return key


def spans(folder: str | Path) -> list[tuple[float, float]]:
    """``[(start, end)]`` of every recorded execution."""
    out = []
    for p in Path(folder).iterdir():
        start, end, _ = p.read_text().split()
        out.append((float(start), float(end)))
    return out


def build_app(url: str | None = None, **kwargs: Any) -> Conveyor:
    app = Conveyor(url, **kwargs)
    app.task(stamp, name="flow.limited", queue="limited", rate_limit=RATE)
    app.task(stamp, name="flow.held", queue="held", concurrency_limit=CONCURRENCY)
    app.task(stamp, name="flow.gpu", queue="gpu", requires=("gpu",))
    app.task(stamp, name="flow.plain", queue="gpu")
    return app


app = build_app(os.environ.get("CONVEYOR_URL") or "memory://flow-app")
