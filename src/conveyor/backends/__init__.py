"""Engines behind one URL: ``memory://``, ``sqlite:///path``; more in later releases.

``open_backend(url)`` returns an unopened ``Backend``; call ``await backend.open()``.
"""

from __future__ import annotations

from conveyor.backends.base import Backend
from conveyor.errors import InvalidInput

SCHEMES = ("memory", "sqlite", "postgresql", "redis")


def make_backend(url: str, *, offline_after: float = 30.0, auto_migrate: bool = True) -> Backend:
    """Build (but do not open) the engine the URL names."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme.startswith("shards+"):  # a ring over several engines: docs/sharding.md
        from conveyor.backends.sharded import ShardedBackend

        return ShardedBackend(url, offline_after=offline_after, auto_migrate=auto_migrate)
    if scheme == "memory":
        from conveyor.backends.memory import MemoryBackend

        return MemoryBackend(url, offline_after=offline_after)
    if scheme in ("postgresql", "postgres"):
        from conveyor.backends.postgres import PostgresBackend

        return PostgresBackend(url, offline_after=offline_after, auto_migrate=auto_migrate)
    if scheme in ("redis", "rediss"):
        from conveyor.backends.redis_engine import RedisBackend

        return RedisBackend(url, offline_after=offline_after, auto_migrate=auto_migrate)
    if scheme == "sqlite":
        from conveyor.backends.sqlite import SqliteBackend

        return SqliteBackend(url, offline_after=offline_after, auto_migrate=auto_migrate)
    raise InvalidInput(
        f"unsupported backend URL {url!r}: expected one of memory://[name], sqlite:///path/to/file.db, "
        "postgresql://user@host:port/db, redis://host:port/db"
    )


__all__ = ["SCHEMES", "Backend", "make_backend"]
