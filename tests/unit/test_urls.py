"""Engine and API URLs: a malformed one is ``InvalidInput`` when it is read, before anything connects."""

from __future__ import annotations

import pytest

from conveyor.backends import make_backend
from conveyor.backends.postgres import PgUrl
from conveyor.backends.redis_rows import parse_url
from conveyor.client import Client, check_url
from conveyor.errors import InvalidInput


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgresql://", "no host or database"),
        ("postgresql:///", "no host or database"),
        ("postgresql://u:p@[::1", "IPv6"),
        ("postgresql://u@host:notaport/db", "notaport"),
        ("postgresql://u@host:70000/db", "out of range"),
        ("postgresql://h/db?sslmod=require", "sslmod"),
        ("redis://host:99999/0", "out of range"),
        ("redis://[::1", "IPv6"),
        ("redis://127.0.0.1:6379/abc", "the database must be a number"),
        ("shards+redis://h/0,h/x", "the database must be a number"),
    ],
)
def test_a_malformed_engine_url_is_bad_input(url: str, problem: str) -> None:
    pytest.importorskip("psycopg" if "postgres" in url else "redis")
    with pytest.raises(InvalidInput, match="invalid URL") as refused:
        make_backend(url)
    assert problem in refused.value.message


def test_a_socket_url_keeps_its_slashes_for_libpq() -> None:
    """``postgresql:///db`` (the local socket) was handed to libpq as ``postgresql:/db``."""
    assert PgUrl("postgresql:///jobs").conninfo == "postgresql:///jobs"
    assert PgUrl("postgresql:///jobs?host=/run/pg").conninfo == "postgresql:///jobs?host=%2Frun%2Fpg"
    assert PgUrl("postgresql://h:6543/jobs?schema=q1").conninfo == "postgresql://h:6543/jobs"


def test_a_redis_url_takes_a_numbered_database_or_none() -> None:
    assert parse_url("redis://h:6380/3").where == "h:6380/3"
    assert parse_url("redis://h").where == "h:6379/0"


@pytest.mark.parametrize("url", ["http://[::1", "notaurl", "ftp://x", "http://", "http://h:99999"])
def test_a_malformed_api_url_is_bad_input_before_any_thread_starts(url: str) -> None:
    with pytest.raises(InvalidInput, match="invalid API URL"):
        Client(url)


def test_an_api_url_loses_only_its_trailing_slash() -> None:
    assert check_url("https://conveyor.example/base/") == "https://conveyor.example/base"
