"""Named SQL queries and numbered migrations, read from the package's ``sql/`` folder.

SQL lives in ``.sql`` files rather than Python strings so it reads, diffs and runs in
a SQL shell as SQL. ``queries.sql`` holds named queries, each after a
``-- name: query_name`` header; migrations are files named ``NNNN_description.sql``,
applied in order of their number.

Queries never spell a transition's states themselves: ``{from:claim}`` becomes the
predicate on the source states of ``claim`` in ``conveyor.states`` (``= 'pending'``,
or ``IN ('retrying','scheduled')``), and ``{to:claim}`` its target state
(``'running'``). The predicate uses ``=`` for one state because SQLite only matches a
partial index (``WHERE state = 'pending'``) on that exact form. ``{from:active}`` and
``{from:terminal}`` name the unfinished and finished states. ``{include:name}``
pastes a fragment defined earlier in the file (a shared filter, say), so that two
variants of a query, each with its own index, need not repeat it.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import LiteralString

from conveyor.states import ACTIVE, TERMINAL, TRANSITIONS, State

_HEADER = re.compile(r"^--\s*name:\s*([A-Za-z_][A-Za-z0-9_]*)\s*$", re.MULTILINE)
_PLACEHOLDER = re.compile(r"\{(from|to):([a-z_]+)\}")
_INCLUDE = re.compile(r"\{include:([A-Za-z_][A-Za-z0-9_]*)\}")
_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_GROUPS: dict[str, frozenset[State]] = {"active": ACTIVE, "terminal": TERMINAL}


def _state_predicate(states: frozenset[State]) -> str:
    names = sorted(s.value for s in states)
    if len(names) == 1:
        return f"= '{names[0]}'"
    return "IN (" + ",".join(f"'{n}'" for n in names) + ")"


def _expand(match: re.Match[str]) -> str:
    kind, name = match.group(1), match.group(2)
    if kind == "to":
        if name not in TRANSITIONS:
            raise KeyError(f"unknown transition {name!r} in SQL placeholder {match.group(0)}")
        return f"'{TRANSITIONS[name][1].value}'"
    if name in _GROUPS:
        return _state_predicate(_GROUPS[name])
    if name not in TRANSITIONS:
        raise KeyError(f"unknown transition {name!r} in SQL placeholder {match.group(0)}")
    return _state_predicate(TRANSITIONS[name][0])


def render(sql: str) -> LiteralString:
    """Fill the state placeholders from the transition table.

    The result is typed ``LiteralString``: it comes from files shipped in the
    package and from the state table, never from user input.
    """
    return _PLACEHOLDER.sub(_expand, sql)


def parse_queries(text: str) -> dict[str, LiteralString]:
    """Split a ``queries.sql`` text into ``{name: rendered query}``."""
    queries: dict[str, LiteralString] = {}
    parts = _HEADER.split(text)
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        sql = _INCLUDE.sub(lambda m: _fragment(queries, m.group(1)), body.strip().rstrip(";").strip())
        queries[name] = render(sql)
    return queries


def _fragment(queries: dict[str, LiteralString], name: str) -> str:
    if name not in queries:
        raise KeyError(f"{{include:{name}}} names no query defined above it")
    return "\n".join(line for line in queries[name].splitlines() if not line.lstrip().startswith("--"))


def load_queries(engine: str) -> dict[str, LiteralString]:
    """The named queries of ``sql/<engine>/queries.sql``."""
    path = resources.files("conveyor.backends").joinpath("sql", engine, "queries.sql")
    return parse_queries(path.read_text(encoding="utf-8"))


def load_migrations(engine: str) -> list[tuple[str, LiteralString]]:
    """``[(name, sql)]`` of ``sql/<engine>/NNNN_*.sql``, in order; names lack ``.sql``.

    Migrations are history: they spell states literally and are never rendered, so a
    later change to the state table cannot change what an old migration did.
    """
    folder = resources.files("conveyor.backends").joinpath("sql", engine)
    found: list[tuple[str, LiteralString]] = []
    for entry in folder.iterdir():
        if _MIGRATION.match(entry.name):
            sql: LiteralString = entry.read_text(encoding="utf-8")  # shipped file, not input
            found.append((entry.name.removesuffix(".sql"), sql))
    found.sort()
    numbers = [name[:4] for name, _ in found]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"two {engine} migrations share a number: {numbers}")
    return found
