"""The Redis engine's Lua scripts: one file per operation under ``lua/``, loaded by name.

Redis scripts cannot import each other, so each is sent as one text: the transition
table generated from ``conveyor.states`` (the one table; Lua keeps no copy of its
own), then ``lib.lua`` (keyspace and transition helpers), ``flow.lua`` (the
flow-control gate: claims and outcomes only), then the operation's own file.
redis-py runs them with EVALSHA and loads them again (SCRIPT LOAD) when the server
answers NOSCRIPT, e.g. after a restart.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from conveyor.states import TERMINAL, TRANSITIONS

NAMES = ("enqueue", "claim", "finish", "release", "reap", "cancel", "heartbeat", "replay", "purge")
FLOW_USERS = frozenset({"claim", "finish"})  # the rest skip defining the gate on every call


def _transition_table() -> str:
    """``TRANS_SRC[name]`` (the allowed source states, space-delimited), ``TRANS_DST[name]``
    and ``TERMINAL``: flat tables, since Lua builds them again on every call."""
    src = ", ".join(
        f'{name} = " {" ".join(s.value for s in sorted(states))} "' for name, (states, _) in sorted(TRANSITIONS.items())
    )
    dst = ", ".join(f'{name} = "{target.value}"' for name, (_, target) in sorted(TRANSITIONS.items()))
    terminal = ", ".join(f"{s.value} = true" for s in sorted(TERMINAL))
    return f"local TRANS_SRC = {{{src}}}\nlocal TRANS_DST = {{{dst}}}\nlocal TERMINAL = {{{terminal}}}\n"


def _read(name: str) -> str:
    return resources.files("conveyor.backends").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


@cache
def source(name: str) -> str:
    """The full text of script ``name``, as sent to Redis."""
    if name not in NAMES:
        raise KeyError(name)
    parts = [_transition_table(), _read("lib"), *([_read("flow")] if name in FLOW_USERS else []), _read(name)]
    return "\n".join(parts)


def register_all(client: Any) -> dict[str, Any]:
    """``redis-py`` Script objects (EVALSHA, reloaded on NOSCRIPT), by name."""
    return {name: client.register_script(source(name)) for name in NAMES}
