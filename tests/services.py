"""Real PostgreSQL and Redis servers for the tests: found, started, or installed.

The tests never mock an engine. ``postgres_url()`` / ``redis_url()`` return a URL
template for a server that answers, starting it (or installing it with apt-get) when
it does not; ``None`` only when it truly cannot be had, and ``unavailable()`` then says
why so the run reports it loudly. Each test gets its own PostgreSQL schema or Redis
key prefix (``{name}`` in the template) and ``drop_store`` removes it afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

PG_HOST, PG_PORT, PG_DB = "127.0.0.1", 5432, "test"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
POSTGRES_TEMPLATE = f"postgresql://{PG_HOST}:{PG_PORT}/{PG_DB}?schema={{name}}"
REDIS_TEMPLATE = f"redis://{REDIS_HOST}:{REDIS_PORT}/0?prefix={{name}}"

_problems: dict[str, str] = {}


def unavailable() -> dict[str, str]:
    """Engine -> why its tests were skipped (empty when every server was had)."""
    return dict(_problems)


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    """One process at a time starts or installs a server (xdist runs several)."""
    with open(f"/tmp/conveyor-tests-{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=False, capture_output=True, timeout=600)


def _wait_for(check: object, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def _apt_install(*packages: str) -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True, env=env, timeout=600)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", *packages], check=False, capture_output=True, env=env, timeout=900
    )


def _pg_ok() -> bool:
    import psycopg

    try:
        with psycopg.connect(host=PG_HOST, port=PG_PORT, dbname=PG_DB, user="postgres", connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _pg_start() -> None:
    if not Path("/etc/postgresql").is_dir():
        _apt_install("postgresql")
    versions = sorted(os.listdir("/etc/postgresql")) if Path("/etc/postgresql").is_dir() else []
    for version in versions:
        hba = Path(f"/etc/postgresql/{version}/main/pg_hba.conf")
        if hba.exists() and "conveyor-tests" not in hba.read_text():
            rules = "# conveyor-tests: trust on loopback\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n"
            hba.write_text(rules + hba.read_text())
        _run("pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start")
        _run("pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "reload")
    if _wait_for(lambda: _port_open(PG_HOST, PG_PORT)):
        _run("su", "postgres", "-c", f"createdb -h {PG_HOST} {PG_DB}")


@cache
def postgres_url() -> str | None:
    """The PostgreSQL URL template, or ``None`` (reason in ``unavailable()``)."""
    with _lock("postgres"):
        if not _pg_ok():
            _pg_start()
        if not _wait_for(_pg_ok, 30.0):
            _problems["postgresql"] = f"no PostgreSQL at {PG_HOST}:{PG_PORT}/{PG_DB}, and starting one failed"
            return None
    return POSTGRES_TEMPLATE


def _redis_ok() -> bool:
    import redis

    try:
        return bool(redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=2).ping())
    except redis.RedisError:
        return False


def redis_start() -> None:
    """Start the local Redis the way this machine does (nothing kept on disk)."""
    if shutil.which("redis-server") is None:
        _apt_install("redis-server")
    _run(
        "redis-server",
        "--daemonize",
        "yes",
        "--bind",
        REDIS_HOST,
        "--port",
        str(REDIS_PORT),
        "--save",
        "",
        "--appendonly",
        "no",
    )


@cache
def redis_url() -> str | None:
    """The Redis URL template, or ``None`` (reason in ``unavailable()``)."""
    with _lock("redis"):
        if not _redis_ok():
            redis_start()
        if not _wait_for(_redis_ok, 20.0):
            _problems["redis"] = f"no Redis at {REDIS_HOST}:{REDIS_PORT}, and starting one failed"
            return None
    return REDIS_TEMPLATE


def drop_store(url: str) -> None:
    """Remove what one test stored: its PostgreSQL schema or its Redis keys (of every shard)."""
    if url.lower().startswith("shards+"):
        from conveyor.backends.sharded import piece_urls

        for piece in piece_urls(url):
            drop_store(piece)
        return
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if parts.scheme.startswith("postgres") and "schema" in query:
        import psycopg

        schema = query["schema"][0]
        with psycopg.connect(host=PG_HOST, port=PG_PORT, dbname=PG_DB, user="postgres", autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    elif parts.scheme.startswith("redis") and "prefix" in query:
        import redis

        prefix = query["prefix"][0]
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
        keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
