"""Query and form values checked by hand, so a bad one is a 400 page that says which and why.

FastAPI's own validation would answer the API's JSON 422; a person at a browser
should get a sentence instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from conveyor.models import QUEUE_PATTERN
from conveyor.states import State
from conveyor.ui.render import UiError

QUEUE_RE = re.compile(QUEUE_PATTERN)
TEXT_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,200}$")  # names, labels, ids, cursors: printable, 1-200 chars
STATES = [s.value for s in State]

Values = Mapping[str, str] | Mapping[str, Sequence[str]]


def _get(values: Values, key: str) -> str | None:
    raw = values.get(key)
    if raw is not None and not isinstance(raw, str):
        raw = raw[0] if raw else None
    raw = None if raw is None else raw.strip()
    return raw or None


def text(values: Values, key: str, pattern: re.Pattern[str] = TEXT_RE, what: str = "") -> str | None:
    value = _get(values, key)
    if value is not None and not pattern.match(value):
        raise UiError(400, f"bad {key!r}: {value[:80]!r} is not {what or 'printable text of 1-200 characters'}")
    return value


def queue(values: Values, key: str = "queue") -> str | None:
    return text(values, key, QUEUE_RE, "a queue name (letters, digits, _ . : -, up to 100)")


def choice(values: Values, key: str, choices: Iterable[str]) -> str | None:
    value = _get(values, key)
    allowed = list(choices)
    if value is not None and value not in allowed:
        raise UiError(400, f"bad {key!r}: {value[:80]!r} is not one of {', '.join(allowed)}")
    return value


def state(values: Values) -> State | None:
    value = choice(values, "state", STATES)
    return None if value is None else State(value)


def integer(values: Values, key: str, low: int, high: int, default: int | None) -> int | None:
    value = _get(values, key)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise UiError(400, f"bad {key!r}: {value[:80]!r} is not a whole number") from None
    if not low <= number <= high:
        raise UiError(400, f"bad {key!r}: {number} is not between {low} and {high}")
    return number


def many(values: Mapping[str, Sequence[str]], key: str, limit: int = 1000) -> list[str]:
    items = [v.strip() for v in values.get(key, []) if v.strip()]
    if len(items) > limit or any(not TEXT_RE.match(v) for v in items):
        raise UiError(400, f"bad {key!r}: up to {limit} values of 1-200 printable characters")
    return items
