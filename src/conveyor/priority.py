"""Priorities, bands and the configurable priority rules of SPEC §4."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from conveyor.errors import InvalidInput

NAMED: dict[str, int] = {"critical": 10, "high": 8, "normal": 5, "low": 2}
DEFAULT_PRIORITY = 5
MIN_PRIORITY, MAX_PRIORITY = 0, 10


class Band(StrEnum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


def band_of(priority: int) -> Band:
    """``high`` for 8-10, ``medium`` for 4-7, ``low`` for 0-3."""
    if priority >= 8:
        return Band.HIGH
    if priority >= 4:
        return Band.MEDIUM
    return Band.LOW


def band_range(band: Band | str) -> tuple[int, int]:
    """Inclusive priority bounds of a band."""
    return {Band.HIGH: (8, 10), Band.MEDIUM: (4, 7), Band.LOW: (0, 3)}[Band(band)]


def parse_priority(value: int | str) -> int:
    """Accept 0-10 or a name (``critical``, ``high``, ``normal``, ``low``)."""
    if isinstance(value, bool):
        raise InvalidInput(f"invalid priority {value!r}: expected 0-10 or one of {', '.join(NAMED)}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().lower() in NAMED:
        return NAMED[value.strip().lower()]
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = int(value.strip())
    else:
        raise InvalidInput(f"invalid priority {value!r}: expected 0-10 or one of {', '.join(NAMED)}")
    if not MIN_PRIORITY <= number <= MAX_PRIORITY:
        raise InvalidInput(f"invalid priority {number}: must be between 0 and 10")
    return number


class PriorityRule(BaseModel):
    """First matching rule sets the priority of a submit that gives none.

    Every given condition must match (regular expressions, searched): ``name``,
    ``queue``, ``labels`` (any label matches), and ``args`` (per key, the value's
    string form matches).
    """

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    queue: str | None = None
    labels: str | None = None
    args: dict[str, str] = Field(default_factory=dict)
    priority: int | str

    @field_validator("priority")
    @classmethod
    def _priority(cls, v: int | str) -> int:
        try:
            return parse_priority(v)
        except InvalidInput as exc:  # a ValueError, so pydantic reports it with the rest
            raise ValueError(exc.message) from exc

    @field_validator("name", "queue", "labels")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {v!r}: {exc}") from exc
        return v

    def matches(self, name: str, queue: str, labels: Sequence[str], args: Mapping[str, Any]) -> bool:
        # Checked on every submit without a priority: the cheap misses come first.
        if self.labels is not None and (not labels or not any(re.search(self.labels, lb) for lb in labels)):
            return False
        for key, pattern in self.args.items():
            if key not in args or not re.search(pattern, str(args[key])):
                return False
        if self.name is not None and not re.search(self.name, name):
            return False
        return self.queue is None or re.search(self.queue, queue) is not None


def default_rules() -> list[PriorityRule]:
    """The rules that apply unless config sets ``priority_rules`` (SPEC §4): an urgent
    label makes a task ``critical``, a task about an important repository ``high``."""
    return [
        PriorityRule(labels="hotfix|urgent|critical", priority="critical"),
        PriorityRule(args={"repo": "core|main|production"}, priority=8),
    ]


def resolve_priority(
    rules: Sequence[PriorityRule],
    name: str,
    queue: str,
    labels: Sequence[str],
    args: Mapping[str, Any],
    default: int = DEFAULT_PRIORITY,
) -> int:
    """Priority from the first matching rule, else ``default``."""
    for rule in rules:
        if rule.matches(name, queue, labels, args):
            return int(rule.priority)
    return default
