"""What only the Redis engine has: its URL, its scripts, its keyspace and its errors.

The behaviour every engine shares is in ``tests/contract/``; these run against the
real local Redis (each test on its own prefix, deleted afterwards), never a mock.
"""

from __future__ import annotations

import asyncio
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
from conveyor.backends.redis_scripts import NAMES, library, source
from conveyor.errors import BackendUnavailable, InvalidInput, TaskExists
from conveyor.features.flow import QueueUpdate
from conveyor.states import TRANSITIONS, State
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


async def test_a_big_batch_keeps_every_index_and_counter_in_step(backend: RedisBackend) -> None:
    """Members and counters are written once per key, in chunks: more tasks than a chunk."""
    pending = [new_task(queue="a") for _ in range(1_100)]
    scheduled = [new_task(queue="b", delay=60) for _ in range(700)]
    await backend.task_enqueue_many(EnqueueParams([*pending, *scheduled]))
    c = backend.client
    assert await c.zcard(backend.key("r", "a")) == 1_100
    assert await c.zcard(backend.key("d", "b")) == 700
    assert await c.zcard(backend.key("all")) == 1_800
    assert await c.hgetall(backend.key("c", "a")) == {"pending": "1100"}
    assert await c.hgetall(backend.key("c", "b")) == {"scheduled": "700"}
    assert await c.smembers(backend.key("queues")) == {"a", "b"}
    await backend.task_enqueue_many(EnqueueParams([new_task(queue="a"), new_task(queue="c")]))
    assert await c.hgetall(backend.key("c", "a")) == {"pending": "1101"}
    assert await c.smembers(backend.key("queues")) == {"a", "b", "c"}


async def test_a_batch_naming_a_stored_or_repeated_id_stores_nothing(backend: RedisBackend) -> None:
    stored = new_task()
    await backend.task_enqueue_many(EnqueueParams([stored]))
    fresh, twice = new_task(), new_task()
    with pytest.raises(TaskExists) as info:
        await backend.task_enqueue_many(EnqueueParams([fresh, twice, new_task(id=twice.id), new_task(id=stored.id)]))
    assert info.value.details["task_id"] == twice.id  # the first offender in batch order
    with pytest.raises(TaskExists) as info:
        await backend.task_enqueue_many(EnqueueParams([fresh, new_task(id=stored.id), new_task(id=fresh.id)]))
    assert info.value.details["task_id"] == stored.id
    assert await backend.client.zrange(backend.key("all"), 0, -1) == [stored.id]
    assert await backend.client.hgetall(backend.key("c", "default")) == {"pending": "1"}


# --- the script channel --------------------------------------------------------------------


async def test_concurrent_calls_share_one_pipelined_connection_and_get_their_own_replies(
    backend: RedisBackend,
) -> None:
    await backend.task_enqueue_many(EnqueueParams([new_task()]))
    channel = backend._channel
    assert channel is not None and channel._proto is not None and channel._proto.transport is not None
    proto = channel._proto
    tasks = [new_task(queue=f"q{i % 3}") for i in range(300)]
    done = await asyncio.gather(*(backend.task_enqueue_many(EnqueueParams([t])) for t in tasks))
    assert [d.id for (d,) in done] == [t.id for t in tasks]
    assert channel._proto is proto and not proto.lost  # the one connection carried them all
    host, port = proto.transport.get_extra_info("sockname")[:2]
    (ours,) = [c for c in await backend.client.client_list() if c["addr"] == f"{host}:{port}"]
    assert ours["cmd"] == "fcall"


async def test_a_cancelled_call_leaves_the_next_reply_to_its_own_caller(backend: RedisBackend) -> None:
    first, second = new_task(), new_task()
    pending = asyncio.ensure_future(backend.task_enqueue_many(EnqueueParams([first])))
    await asyncio.sleep(0)  # written, reply not read yet
    pending.cancel()
    (done,) = await backend.task_enqueue_many(EnqueueParams([second]))
    assert done.id == second.id
    assert (await backend.task_get(first.id)).id == first.id  # the server ran it all the same


async def test_a_library_the_server_lost_is_loaded_again_by_the_next_call(backend: RedisBackend) -> None:
    await backend.task_enqueue_many(EnqueueParams([new_task()]))
    name = library()[1]["enqueue"].removesuffix("_enqueue")
    # as after a restart without persistence (other test processes just load it again)
    assert await backend.client.execute_command("FUNCTION", "DELETE", name)
    t = new_task()
    (done,) = await backend.task_enqueue_many(EnqueueParams([t]))
    assert done.id == t.id and done.created
    assert len((await backend.task_claim(ClaimParams("w1", 5, 30.0))).tasks) == 2


async def test_without_functions_operations_run_as_scripts_sent_again_when_forgotten(backend: RedisBackend) -> None:
    """Servers before Redis 7 have no Functions: each operation is a script (EVALSHA)."""
    channel = backend._channel
    assert channel is not None
    await backend.task_enqueue_many(EnqueueParams([new_task()]))
    channel._functions = None
    channel._sha["enqueue"] = "0" * 40  # as after a restart or SCRIPT FLUSH: NOSCRIPT
    t = new_task()
    (done,) = await backend.task_enqueue_many(EnqueueParams([t]))
    assert done.id == t.id and done.created
    claimed = (await backend.task_claim(ClaimParams("w1", 5, 30.0))).tasks
    assert len(claimed) == 2
    assert await backend.task_finish_many([Outcome(c.id, c.lease_token, "complete") for c in claimed]) == [True] * 2


async def test_a_user_not_allowed_to_load_functions_runs_scripts(backend: RedisBackend) -> None:
    """An ACL that denies FUNCTION (but allows EVALSHA) still works, by scripts."""
    user = f"conveyor-test-{uuid.uuid4().hex[:8]}"
    await backend.client.acl_setuser(
        user, enabled=True, nopass=True, keys=["*"], channels=["*"], commands=["+@all", "-function", "-fcall"]
    )
    url = f"redis://{user}:any@127.0.0.1:6379/0?prefix=u{uuid.uuid4().hex[:12]}"
    limited = make_backend(url)
    assert isinstance(limited, RedisBackend)
    try:
        await limited.open()
        assert limited._channel is not None and limited._channel._functions is None
        t = new_task()
        await limited.task_enqueue_many(EnqueueParams([t]))
        (claimed,) = (await limited.task_claim(ClaimParams("w1", 5, 30.0))).tasks
        assert claimed.id == t.id
    finally:
        await limited.close()
        await backend.client.acl_deluser(user)
        services.drop_store(url)


async def test_without_the_channel_operations_run_through_redis_py_scripts(backend: RedisBackend) -> None:
    """``rediss://`` and Unix sockets have no script channel: redis-py's Script objects
    run every operation (EVALSHA, loaded again on NOSCRIPT)."""
    channel, backend._channel = backend._channel, None
    assert channel is not None
    channel.close()
    await backend.client.script_flush()
    parent, child = new_task(), new_task()
    child.depends_on = [parent.id]
    await backend.task_enqueue_many(EnqueueParams([parent, child]))
    (claimed,) = (await backend.task_claim(ClaimParams("w1", 5, 30.0))).tasks
    assert claimed.id == parent.id
    assert await backend.task_finish_many([Outcome(claimed.id, claimed.lease_token, "complete")]) == [True]
    assert (await backend.task_get(child.id)).state is State.PENDING


async def test_a_dropped_connection_is_opened_again_by_the_next_call(backend: RedisBackend) -> None:
    await backend.task_enqueue_many(EnqueueParams([new_task()]))
    channel = backend._channel
    assert channel is not None and channel._proto is not None and channel._proto.transport is not None
    host, port = channel._proto.transport.get_extra_info("sockname")[:2]
    assert await backend.client.client_kill_filter(_type=None, addr=f"{host}:{port}") == 1
    t = new_task()
    (done,) = await backend.task_enqueue_many(EnqueueParams([t]))
    assert done.id == t.id and done.created
    claim = await backend.task_claim(ClaimParams("w1", 5, 30.0))
    assert len(claim.tasks) == 2


def test_the_script_channel_runs_on_uvloop_too() -> None:
    uvloop = pytest.importorskip("uvloop")
    url = f"redis://127.0.0.1:6379/0?prefix=u{uuid.uuid4().hex[:12]}"

    async def submit_and_claim() -> None:
        b = make_backend(url)
        await b.open()
        try:
            t = new_task()
            (done,) = await b.task_enqueue_many(EnqueueParams([t]))
            assert done.id == t.id and done.created
            assert [c.id for c in (await b.task_claim(ClaimParams("w1", 1, 30.0))).tasks] == [t.id]
        finally:
            await b.close()

    try:
        uvloop.run(submit_and_claim())
    finally:
        services.drop_store(url)


async def test_the_bench_writes_under_its_own_prefix_and_deletes_only_that(backend: RedisBackend) -> None:
    from conveyor.bench import Scratch

    await backend.task_enqueue_many(EnqueueParams([new_task()]))  # another store in the same database
    scratch = Scratch("redis://127.0.0.1:6379/0")
    place = scratch.place("enqueue-1")
    tag = parse_url(place.url).tag
    assert tag != backend.tag and tag.startswith("{conveyor-bench-")
    bench_store = make_backend(place.url)
    await bench_store.open()
    await bench_store.task_enqueue_many(EnqueueParams([new_task(queue=place.queue) for _ in range(20)]))
    await bench_store.close()
    assert len([k async for k in backend.client.scan_iter(match=f"{tag}:*")]) > 40
    scratch.cleanup()
    assert [k async for k in backend.client.scan_iter(match=f"{tag}:*")] == []
    assert await backend.client.zcard(backend.key("all")) == 1


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
