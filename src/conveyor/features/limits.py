"""Flow limits declared in code (``@app.task`` options) and config, as engine updates.

Code and config describe the limits; the engine stores them cluster-wide. A worker
applies ``configured_updates`` with ``queue_update`` when it starts (so does
``Conveyor.sync_limits``). Config wins over code for a task name; the ``breaker``
section is the default breaker of every registered task. Only settings that are
given are written: a pause, or a limit set at run time on something code and
config leave alone, stays as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from conveyor.config import Settings
from conveyor.features.flow import QueueUpdate, check_update


def configured_updates(settings: Settings, tasks: Mapping[str, Any]) -> list[QueueUpdate]:
    """One ``QueueUpdate`` per queue or task name that code or config limits.

    ``tasks`` maps task names to ``TaskDef``-like objects (``rate_limit``,
    ``concurrency_limit``, ``breaker_threshold``, ``breaker_cooldown``)."""
    updates: list[QueueUpdate] = []
    for name, q in sorted(settings.queues.items()):
        if q.rate_limit is not None or q.concurrency is not None:
            updates.append(QueueUpdate(name, "queue", rate_limit=q.rate_limit, concurrency=q.concurrency))
    default = settings.breaker
    for name in sorted(set(tasks) | set(settings.tasks)):
        td, cfg = tasks.get(name), settings.tasks.get(name)
        fields: dict[str, Any] = {
            "rate_limit": getattr(td, "rate_limit", None),
            "concurrency": getattr(td, "concurrency_limit", None),
            "breaker_threshold": getattr(td, "breaker_threshold", None),
            "breaker_cooldown": getattr(td, "breaker_cooldown", None),
        }
        if cfg is not None:
            fields["rate_limit"] = cfg.rate_limit or fields["rate_limit"]
            fields["concurrency"] = cfg.concurrency or fields["concurrency"]
            fields["breaker_threshold"] = cfg.breaker_threshold or fields["breaker_threshold"]
            fields["breaker_cooldown"] = cfg.breaker_cooldown or fields["breaker_cooldown"]
        if td is not None and fields["breaker_threshold"] is None and default.threshold is not None:
            fields["breaker_threshold"] = default.threshold
        if fields["breaker_threshold"] is not None and fields["breaker_cooldown"] is None:
            fields["breaker_cooldown"] = default.cooldown
        if any(v is not None for v in fields.values()):
            updates.append(QueueUpdate(name, "task", **fields))
    return updates


def check_task_options(name: str, options: Mapping[str, Any]) -> None:
    """Refuse bad flow options of ``@app.task`` at declaration time (``InvalidInput``)."""
    check_update(
        QueueUpdate(
            name,
            "task",
            rate_limit=options.get("rate_limit"),
            concurrency=options.get("concurrency_limit"),
            breaker_threshold=options.get("breaker_threshold"),
            breaker_cooldown=options.get("breaker_cooldown"),
        )
    )
