"""An app with periodic schedules, for ``conveyor scheduler``/``cron list`` tests."""

from __future__ import annotations

import os

from conveyor import Conveyor

app = Conveyor(os.environ.get("CONVEYOR_URL") or "memory://cron-app")


@app.periodic(every=1, name="heartbeat", queue="cron", catch_up="none")
def heartbeat() -> str:
    return "beat"


@app.periodic("*/5 * * * *", name="report", args={"region": "eu"})
def report(region: str) -> str:
    return region
