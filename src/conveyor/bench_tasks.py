"""The tasks ``conveyor bench`` runs: no-ops, so the figures measure Conveyor itself.

Workers may also load them the usual way, with the URL from ``CONVEYOR_URL``::

    CONVEYOR_URL=sqlite:///bench.db conveyor worker --app conveyor.bench_tasks:app

The benchmark builds its own apps with ``make_app(url)``, which registers the same
tasks under the same names, so a submitter and a worker agree on them.
"""

from __future__ import annotations

import os

from conveyor.app import Conveyor
from conveyor.bench import NOOP


async def noop() -> None:
    """Does nothing: the whole cost of running it is Conveyor's own."""


def make_app(url: str | None = None) -> Conveyor:
    """A ``Conveyor`` on ``url`` (``None``: the configured one) with the bench tasks."""
    app = Conveyor(url)
    app.task(name=NOOP)(noop)
    return app


app = make_app(os.environ.get("CONVEYOR_URL"))
