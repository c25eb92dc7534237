"""What only the Redis engine has: its URL, its scripts, its keyspace and its errors.

The behaviour every engine shares is in ``tests/contract/``; these run against the
real local Redis (each test on its own prefix, deleted afterwards), never a mock.
"""

from __future__ import annotations

import re
import socket
import time
import uuid
from collections.abc import AsyncIterator
from importlib import resources

import pytest

from conveyor.backends import make_backend
from conveyor.backends.base import CancelParams, ClaimParams, EnqueueParams, Outcome
from conveyor.backends.redis_engine import RedisBackend
from conveyor.backends.redis_rows import parse_url
from conveyor.backends.redis_scripts import NAMES, source
from conveyor.errors import BackendUnavailable, InvalidInput
from conveyor.features.flow import QueueUpdate
from conveyor.states import TRANSITIONS
from tests import services
from tests.contract.helpers import new_task

pytestmark = pytest.mark.skipif(services.redis_url() is None, reason="no Redis server")


@pytest.fixture
async def backend() -> AsyncIterator[RedisBackend]:
    url = f"redis://127.0.0.1:6379/0?prefix=u{uuid.uuid4().hex[:12]}"
    b = make_backend(url)
    assert isinstance(b, RedisBackend)
    await b.open()
    yield b
    await b.close()
    services.drop_store(url)


# --- the URL -----------------------------------------------------------------------------


def test_url_defaults_to_the_conveyor_prefix_and_db_0() -> None:
    u = parse_url("redis://localhost")
    assert (u.prefix, u.tag, u.where) == ("conveyor", "{conveyor}", "localhost:6379/0")


def test_url_prefix_is_taken_out_and_other_options_pass_to_redis_py() -> None:
    u = parse_url("rediss://user:secret@cache.example:6380/3?prefix=shop&ssl_cert_reqs=none")
    assert (u.prefix, u.where) == ("shop", "cache.example:6380/3")
    assert u.server == "rediss://user:secret@cache.example:6380/3?ssl_cert_reqs=none"
    assert "secret" not in u.where  # error messages never show the password


@pytest.mark.parametrize("bad", ["redis://h/0?prefix=", "redis://h/0?prefix=a{b}", "redis://h/0?prefix=a*"])
def test_url_refuses_a_prefix_that_would_break_the_hash_tag_or_key_patterns(bad: str) -> None:
    with pytest.raises(InvalidInput):
        parse_url(bad)


# --- the scripts ---------------------------------------------------------------------------


def test_every_lua_file_is_a_registered_script() -> None:
    folder = resources.files("conveyor.backends").joinpath("lua")
    files = {p.name.removesuffix(".lua") for p in folder.iterdir() if p.name.endswith(".lua")}
    assert files - {"lib", "flow"} == set(NAMES)


def test_scripts_carry_the_one_transition_table_from_conveyor_states() -> None:
    text = source("claim")
    src_line = next(line for line in text.splitlines() if line.startswith("local TRANS_SRC = "))
    dst_line = next(line for line in text.splitlines() if line.startswith("local TRANS_DST = "))
    for name, (src, dst) in TRANSITIONS.items():
        assert f'{name} = "{dst.value}"' in dst_line
        allowed = re.search(rf'\b{name} = " ([a-z ]+) "', src_line)
        assert allowed is not None and set(allowed.group(1).split()) == {s.value for s in src}


def test_scripts_never_scan_the_keyspace() -> None:
    """``KEYS``/``SCAN`` inside a script blocks the server and breaks Cluster."""
    for name in NAMES:
        assert not re.search(r"""redis\.call\(\s*["'](KEYS|SCAN)["']""", source(name), re.IGNORECASE), name


# --- the keyspace --------------------------------------------------------------------------


async def test_every_key_starts_with_the_hash_tag_of_the_prefix(backend: RedisBackend) -> None:
    parent, child = new_task(queue="a"), new_task(queue="b")
    child.depends_on = [parent.id]
    keyed = new_task(queue="a", idempotency_key="k1", requires=["gpu"])
    await backend.task_enqueue_many(EnqueueParams([parent, child, keyed, new_task(delay=60)]))
    await backend.queue_update(QueueUpdate("a", rate_limit="100/s"))
    (claimed,) = (await backend.task_claim(ClaimParams("w1", 1, 30.0, queues=("a",)))).tasks
    await backend.task_finish_many([Outcome(claimed.id, claimed.lease_token, "complete", result=1)])
    await backend.task_cancel(CancelParams(keyed.id))
    keys = [k async for k in backend.client.scan_iter(match=f"*{parse_url(backend.url).prefix}*")]
    assert len(keys) > 10
    assert all(k.startswith(backend.tag + ":") for k in keys), keys


async def test_task_history_is_one_compact_list_per_task(backend: RedisBackend) -> None:
    t = new_task()
    await backend.task_enqueue_many(EnqueueParams([t]))
    await backend.task_claim(ClaimParams("w1", 1, 30.0))
    entries = await backend.client.lrange(backend.key("h", t.id), 0, -1)
    assert [e.split(",")[1:3] for e in entries] == [['"pending"', '"enqueue"'], ['"running"', '"claim"']]
    assert all(len(e) < 80 for e in entries)


async def test_claim_takes_the_best_task_from_the_head_of_a_long_queue(backend: RedisBackend) -> None:
    """The ready set is ordered by (priority, run_at, id), so the best task is its first member."""
    now = time.time()
    await backend.task_enqueue_many(EnqueueParams([new_task(priority=1, run_at=now - 1) for _ in range(3000)]))
    urgent = new_task(priority=9)
    await backend.task_enqueue_many(EnqueueParams([urgent]))
    assert await backend.client.zrange(backend.key("r", "default"), 0, 0) == [urgent.id]
    (claimed,) = (await backend.task_claim(ClaimParams("w1", 1, 30.0))).tasks
    assert claimed.id == urgent.id


# --- errors --------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_open_against_no_server_raises_backend_unavailable_in_one_line() -> None:
    port = _closed_port()
    b = make_backend(f"redis://127.0.0.1:{port}/0?prefix=nobody")
    with pytest.raises(BackendUnavailable) as info:
        await b.open()
    assert f"Redis at 127.0.0.1:{port}/0 is unavailable" in str(info.value)
    assert "\n" not in str(info.value)


async def test_operations_before_open_say_so() -> None:
    b = make_backend("redis://127.0.0.1:6379/0?prefix=unopened")
    with pytest.raises(BackendUnavailable, match="not open"):
        await b.task_get("x")
