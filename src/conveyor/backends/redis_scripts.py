"""The Redis engine's Lua code: one file per operation under ``lua/``, run by name.

The helpers come first: the transition table generated from ``conveyor.states`` (the
one table; Lua keeps no copy of its own), ``lib.lua`` (keyspace and transition
helpers) and ``flow.lua`` (the flow-control gate). On Redis 7 and later they are
loaded once, with every operation, as a Redis Functions library (``library()``): a
call is an FCALL that runs only its operation, where a script would first define
every helper again (10-20 µs, a large share of a one-task submit's server time). The library
and its functions are named after a hash of the code, so processes of two Conveyor
versions sharing a server each call their own; a server that lost the library (a
restart without persistence, FUNCTION FLUSH) gets it again on the next call.

Older servers, and redis-py's path (TLS, Unix sockets), run each operation as one
script (``source(name)``: helpers, then the operation) with EVALSHA, sent whole with
EVAL when the server answers NOSCRIPT. The engine's ``ScriptChannel`` is one pipelined
connection of its own, a fraction of redis-py's cost per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, cast

import hiredis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, NoScriptError, ResponseError

from conveyor.states import TERMINAL, TRANSITIONS

NAMES = ("enqueue", "claim", "finish", "release", "reap", "cancel", "heartbeat", "replay", "purge", "outbox", "restore")
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
    """The full text of script ``name``, as sent to Redis with EVAL."""
    if name not in NAMES:
        raise KeyError(name)
    flow = [_read("flow")] if name in FLOW_USERS else []
    return "\n".join([_transition_table(), _read("lib"), *flow, "init(KEYS, ARGV)", _read(name)])


@cache
def library() -> tuple[str, dict[str, str]]:
    """The Redis Functions library (its text for FUNCTION LOAD) and the function name of
    each operation. Each operation's file becomes the body of a function whose parameters
    are named ``KEYS`` and ``ARGV``, so the same file runs as a script or a function."""
    parts = [_transition_table(), _read("lib"), _read("flow")]
    for name in NAMES:
        head = f"redis.register_function('NAME_{name}', function(KEYS, ARGV)\ninit(KEYS, ARGV)"
        parts.append(f"{head}\n{_read(name)}\nend)")
    body = "\n".join(parts)
    tag = "conveyor_" + hashlib.sha1(body.encode()).hexdigest()[:16]
    return f"#!lua name={tag}\n" + body.replace("'NAME_", f"'{tag}_"), {name: f"{tag}_{name}" for name in NAMES}


def register_all(client: Any) -> dict[str, Any]:
    """``redis-py`` Script objects (EVALSHA, reloaded on NOSCRIPT), by name."""
    return {name: client.register_script(source(name)) for name in NAMES}


# --- the script channel ------------------------------------------------------------------

#: An error reply as the exception redis-py raises for it (``OutOfMemoryError``, ...).
_error = cast(Callable[[str], Exception], BaseParser.parse_error)


class ScriptChannel:
    """The engine's own connection for its scripts: EVALSHA on a bare asyncio protocol
    with hiredis packing and parsing, callers pipelined in one FIFO of replies.

    redis-py spends more time per call than the server does running a submit (pool
    checkout, observability hooks, command building, its stream reader); this path
    writes one packed command and waits on one future. Replies come back in command
    order, so concurrent callers share the connection without a lock. A server
    restart or a dropped link fails every call in flight with redis-py's
    ``ConnectionError`` (the engine's retries decide what to repeat), and the next call
    connects again; error replies become redis-py's exception classes, so callers
    handle exactly what they would from redis-py. NOSCRIPT (a restarted or flushed
    server) is answered by sending the script's text once with EVAL.
    """

    def __init__(self, options: ChannelOptions) -> None:
        self.options = options
        self._sha = {name: hashlib.sha1(source(name).encode()).hexdigest() for name in NAMES}
        self._functions: dict[str, str] | None = None  # None: scripts (no Functions here)
        self._proto: _ReplyProtocol | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting = asyncio.Lock()

    async def run(self, name: str, key: str, args: Sequence[Any]) -> Any:
        """Run operation ``name`` with ``KEYS = [key]``; its reply, or the error it raised."""
        proto = self._proto
        if proto is None or proto.lost or self._loop is not asyncio.get_running_loop():
            proto = await self.connect()
        functions = self._functions
        if functions is not None:
            try:
                return await proto.call(("FCALL", functions[name], 1, key, *args))
            except ResponseError as exc:
                if not str(exc).startswith("Function not found"):
                    raise
            await _load_library(proto)  # the server lost it: the call did not run
            return await proto.call(("FCALL", functions[name], 1, key, *args))
        try:
            return await proto.call(("EVALSHA", self._sha[name], 1, key, *args))
        except NoScriptError:
            return await proto.call(("EVAL", source(name), 1, key, *args))

    async def connect(self) -> _ReplyProtocol:
        """The open connection, made first if there is none (or it was lost)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or the engine moved to another event loop
            self.close()
            self._loop, self._connecting = loop, asyncio.Lock()
        async with self._connecting:
            current = self._proto
            if current is not None and not current.lost:
                return current  # another caller connected meanwhile
            opt = self.options
            _, proto = await asyncio.wait_for(
                loop.create_connection(_ReplyProtocol, opt.host, opt.port), opt.connect_timeout
            )
            try:
                _keepalive(proto, opt.keepalive)
                hello: list[Awaitable[Any]] = []
                if opt.password is not None:
                    auth = (opt.username, opt.password) if opt.username else (opt.password,)
                    hello.append(proto.call(("AUTH", *auth)))
                if opt.db:
                    hello.append(proto.call(("SELECT", opt.db)))
                for reply in hello:
                    await reply
                self._functions = library()[1] if await _load_library(proto) else None
            except BaseException:
                proto.close()
                raise
            self._proto = proto
            return proto

    def close(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None:
            with contextlib.suppress(RuntimeError):  # its event loop is already closed
                proto.close()


@dataclass(frozen=True, slots=True)
class ChannelOptions:
    """Where the script channel connects (taken from the redis-py client's own options)."""

    host: str
    port: int
    db: int = 0
    username: str | None = None
    password: str | None = None
    connect_timeout: float = 2.0
    keepalive: Mapping[int, int] = field(default_factory=dict)

    @classmethod
    def from_client(cls, client: Any, keepalive: Mapping[int, int]) -> ChannelOptions | None:
        """The options of a plain-TCP redis-py client, or ``None`` when the channel cannot
        stand in for it (TLS, a Unix socket, a credential provider): scripts then run
        through redis-py."""
        kw = client.connection_pool.connection_kwargs
        if "host" not in kw or kw.get("credential_provider") is not None:
            return None
        return cls(
            host=kw["host"],
            port=int(kw.get("port") or 6379),
            db=int(kw.get("db") or 0),
            username=kw.get("username"),
            password=kw.get("password"),
            connect_timeout=float(kw.get("socket_connect_timeout") or 2.0),
            keepalive=keepalive,
        )


async def _load_library(proto: _ReplyProtocol) -> bool:
    """Load the Functions library (a no-op if the server has it); False on a server
    without Functions (before Redis 7), or for a user whose ACL does not allow loading
    one, whose calls then go by EVALSHA."""
    try:
        await proto.call(("FUNCTION", "LOAD", library()[0]))
    except NoPermissionError:
        return False
    except ResponseError as exc:
        text = str(exc)
        if text.startswith("unknown command") or "unknown subcommand" in text:
            return False
        if not text.startswith("Library ") or "already exists" not in text:
            raise
    return True


def _keepalive(proto: _ReplyProtocol, options: Mapping[int, int]) -> None:
    sock = proto.transport.get_extra_info("socket") if proto.transport is not None else None
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in options.items():
        sock.setsockopt(socket.IPPROTO_TCP, option, value)


class _ReplyProtocol(asyncio.Protocol):
    """One Redis connection: commands written in order, replies matched to them in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._reader = hiredis.Reader(encoding="utf-8")
        self._waiting: deque[asyncio.Future[Any]] = deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def call(self, command: tuple[Any, ...]) -> asyncio.Future[Any]:
        if self.lost or self.transport is None:
            raise RedisConnectionError("the connection to Redis was closed")
        future = asyncio.get_running_loop().create_future()
        self.transport.write(hiredis.pack_command(command))
        self._waiting.append(future)
        return future

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                future = self._waiting.popleft()
                if future.done():  # its caller gave up (cancelled): the reply is dropped
                    continue
                if isinstance(reply, hiredis.ReplyError):
                    future.set_exception(_error(str(reply)))
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # garbage, or a reply nobody asked for
            self._fail(RedisConnectionError(f"Redis protocol error: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(
            RedisConnectionError(f"Connection closed by server: {exc}" if exc else "Connection closed by server.")
        )

    def _fail(self, exc: Exception) -> None:
        self.lost = True
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(exc)

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()
