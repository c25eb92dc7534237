"""Single submits: the fast path answers like the route, group commit keeps each submit's outcome."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from conveyor.api import create_app
from conveyor.api.submit import SubmitBatcher
from conveyor.backends.base import Enqueued, EnqueueParams
from conveyor.config import load_settings
from conveyor.errors import BackendUnavailable
from conveyor.models import TaskSpec
from tests.api.conftest import AppFactory, assert_error, auth

ADMIN = auth("admin")

RICH: list[dict[str, Any]] = [
    {"name": "email.send"},
    {
        "name": "email.send",
        "args": {"to": "zoë@例え.jp", "n": 12345678901234567890, "x": 1e16, "y": 0.1, "z": [None, True, {"a": ""}]},
        "queue": "mail",
        "priority": "high",
        "labels": ["b", "a"],
        "requires": ["gpu"],
        "idempotency_key": 'ключ "quoted" \n line',
        "max_retries": 7,
        "timeout": 2.5,
        "retry": {"max_retries": 2, "base": 3.0, "jitter": False},
    },
    {"name": "later", "delay": 3600},
    {"name": "at", "run_at": "2031-05-06T07:08:09.123456+02:00"},
]


@pytest.mark.parametrize("url", ["sqlite", "memory://"])
@pytest.mark.parametrize("body", RICH)
async def test_submit_answers_what_a_read_returns(
    make_app: AppFactory, client_for: Any, db_url: str, url: str, body: dict[str, Any]
) -> None:
    """The created task is built from the submit, not read back: it must be the stored one."""
    app = make_app() if url == "sqlite" else make_app(url=url)
    async with client_for(app) as client:
        r = await client.post("/tasks", json=body, headers=ADMIN)
        assert r.status_code == 201, r.text
        assert r.headers["content-type"] == "application/json" and r.headers["x-request-id"]
        stored = await client.get(f"/tasks/{r.json()['id']}", headers=ADMIN)
        assert r.json() == stored.json()
        assert r.content == stored.content  # the same serializer, so the same bytes


async def test_fast_path_and_route_answer_alike(client: httpx.AsyncClient) -> None:
    """A body FastAPI parses but the fast path leaves to it (a media type with parameters)."""
    body = json.dumps({"name": "a", "args": {"k": 1}}).encode()
    fast = await client.post("/tasks", content=body, headers=ADMIN | {"content-type": "application/json"})
    routed = await client.post(
        "/tasks", content=body, headers=ADMIN | {"content-type": "application/json; charset=UTF-8; x=y"}
    )
    assert fast.status_code == routed.status_code == 201
    a, b = fast.json(), routed.json()
    assert set(a) == set(b) and a["args"] == b["args"] and a["state"] == b["state"] == "pending"


@pytest.mark.parametrize(
    ("headers", "content", "status", "code"),
    [
        ({}, b'{"name": "a"}', 401, "Unauthorized"),
        (auth("read"), b'{"name": "a"}', 403, "Forbidden"),
        (ADMIN, b'{"name": "a", "bogus": 1}', 422, "ValidationError"),
        (ADMIN, b'["a"]', 422, "ValidationError"),
        (ADMIN, b"{not json", 422, "ValidationError"),
        (ADMIN, b"\xff\xfe", 422, "ValidationError"),
        (ADMIN, b"", 422, "ValidationError"),
        ({}, b"{not json", 422, "ValidationError"),  # FastAPI parses the body before it checks the token
    ],
)
async def test_requests_the_fast_path_leaves_get_the_routes_errors(
    client: httpx.AsyncClient, headers: dict[str, str], content: bytes, status: int, code: str
) -> None:
    r = await client.post("/tasks", content=content, headers=headers | {"content-type": "application/json"})
    assert_error(r, status, code)
    assert r.headers["x-request-id"]


async def test_submit_is_rate_limited_with_retry_after(make_app: AppFactory, client_for: Any) -> None:
    async with client_for(make_app(api={"rate_limit": 0.5, "rate_burst": 2})) as client:
        codes = [(await client.post("/tasks", json={"name": "a"}, headers=ADMIN)).status_code for _ in range(3)]
        assert codes == [201, 201, 429]
        r = await client.post("/tasks", json={"name": "a"}, headers=ADMIN)
        assert_error(r, 429, "RateLimited")
        assert int(r.headers["retry-after"]) >= 1


async def test_concurrent_submits_share_a_transaction(make_app: AppFactory, client_for: Any) -> None:
    app = make_app()
    calls: list[int] = []
    async with client_for(app) as client:
        backend = await app.state.conveyor.backend()
        real = backend.task_enqueue_many

        async def counting(params: EnqueueParams) -> list[Enqueued]:
            calls.append(len(params.tasks))
            return await real(params)

        backend.task_enqueue_many = counting
        rs = await asyncio.gather(
            *(client.post("/tasks", json={"name": "a", "args": {"i": i}}, headers=ADMIN) for i in range(20))
        )
    assert [r.status_code for r in rs] == [201] * 20
    assert len({r.json()["id"] for r in rs}) == 20
    assert [r.json()["args"]["i"] for r in rs] == list(range(20))
    assert sum(calls) == 20 and len(calls) < 20


async def test_a_full_queue_refuses_only_the_submits_over_its_bound(make_app: AppFactory, client_for: Any) -> None:
    async with client_for(make_app(queues={"small": {"max_length": 3}})) as client:
        bodies = [{"name": "a", "queue": "small", "args": {"i": i}} for i in range(5)]
        bodies.insert(2, {"name": "a", "queue": "other"})
        rs = await asyncio.gather(*(client.post("/tasks", json=b, headers=ADMIN) for b in bodies))
        codes = [r.status_code for r in rs]
        assert codes == [201, 201, 201, 201, 503, 503]  # arrival order decides, as one by one
        for r in rs[4:]:
            assert_error(r, 503, "QueueFull")
            assert r.headers["retry-after"] == "1"
        listed = (await client.get("/tasks", params={"queue": "small"}, headers=ADMIN)).json()["items"]
        assert sorted(t["args"]["i"] for t in listed) == [0, 1, 2]


LONE_SURROGATES = [
    b'{"name": "a", "args": {"x": "\\ud800"}}',
    b'{"name": "a", "args": {"\\udc00": 1}}',
    b'{"name": "a", "labels": ["\\ud800"]}',
    b'{"name": "a", "requires": ["x\\udfff"]}',
    b'{"name": "a", "depends_on": ["\\ud800"]}',
]


async def test_a_lone_surrogate_is_refused_alone_and_the_concurrent_submits_are_stored(
    client: httpx.AsyncClient,
) -> None:
    json_headers = ADMIN | {"content-type": "application/json"}
    good = [client.post("/tasks", json={"name": "a", "args": {"i": i, "s": "😀"}}, headers=ADMIN) for i in range(30)]
    bad = [client.post("/tasks", content=body, headers=json_headers) for body in LONE_SURROGATES]
    rs = await asyncio.gather(*good[:15], *bad, *good[15:])
    for r in rs[15 : 15 + len(bad)]:
        assert_error(r, 422, "ValidationError")
        assert "Unicode" in r.json()["error"]["message"]
    ok = rs[:15] + rs[15 + len(bad) :]
    assert [r.status_code for r in ok] == [201] * 30
    listed = (await client.get("/tasks", params={"limit": 100}, headers=ADMIN)).json()["items"]
    assert sorted(t["args"]["i"] for t in listed) == list(range(30))
    for path, body in [
        ("/tasks/batch", b'{"tasks": [{"name": "a"}, {"name": "a", "args": {"x": "\\ud800"}}]}'),
        ("/dlq/replay", b'{"ids": ["\\ud800"]}'),
    ]:
        r = await client.post(path, content=body, headers=json_headers)
        assert_error(r, 422, "ValidationError")
    assert len((await client.get("/tasks", params={"limit": 100}, headers=ADMIN)).json()["items"]) == 30


async def test_an_unforeseen_error_fails_only_its_own_submit(make_app: AppFactory, client_for: Any) -> None:
    app = make_app()
    async with client_for(app) as client:
        backend = await app.state.conveyor.backend()
        real = backend.task_enqueue_many

        async def fragile(params: EnqueueParams) -> list[Enqueued]:
            if any(t.args.get("boom") for t in params.tasks):
                raise RuntimeError("an engine error no check foresaw")
            return await real(params)

        backend.task_enqueue_many = fragile
        bodies = [{"name": "a", "args": {"i": i, "boom": i == 7}} for i in range(20)]
        rs = await asyncio.gather(*(client.post("/tasks", json=b, headers=ADMIN) for b in bodies))
    assert [r.status_code for r in rs] == [500 if i == 7 else 201 for i in range(20)]


async def test_concurrent_repeats_of_an_idempotency_key(client: httpx.AsyncClient) -> None:
    body = {"name": "a", "idempotency_key": "once"}
    rs = await asyncio.gather(*(client.post("/tasks", json=body, headers=ADMIN) for _ in range(4)))
    assert sorted(r.status_code for r in rs) == [200, 200, 200, 201]
    assert len({r.json()["id"] for r in rs}) == 1
    assert {r.content for r in rs[1:]} == {rs[0].content}


async def test_an_unknown_dependency_fails_only_its_submit(client: httpx.AsyncClient) -> None:
    parent = (await client.post("/tasks", json={"name": "p"}, headers=ADMIN)).json()
    bodies = [{"name": "c", "depends_on": [parent["id"]]}, {"name": "c", "depends_on": ["nope"]}, {"name": "x"}]
    rs = await asyncio.gather(*(client.post("/tasks", json=b, headers=ADMIN) for b in bodies))
    assert [r.status_code for r in rs] == [201, 422, 201]
    assert rs[0].json()["state"] == "waiting" and rs[0].json()["depends_on"] == [parent["id"]]
    error = assert_error(rs[1], 422, "ValidationError")
    assert error["details"]["task_id"] == "nope" and "nope" in error["message"]


async def test_an_outage_fails_the_whole_batch(make_app: AppFactory, client_for: Any) -> None:
    app = make_app()
    async with client_for(app) as client:
        backend = await app.state.conveyor.backend()

        async def down(params: EnqueueParams) -> list[Enqueued]:
            raise BackendUnavailable("database is locked")

        backend.task_enqueue_many = down
        rs = await asyncio.gather(*(client.post("/tasks", json={"name": "a"}, headers=ADMIN) for _ in range(3)))
    for r in rs:
        assert_error(r, 503, "BackendUnavailable")


async def test_batcher_outside_http(db_url: str) -> None:
    """The batcher alone: results in submit order, one engine call for a burst."""
    app = create_app(load_settings(url=db_url))
    batcher: SubmitBatcher = app.state.submitter
    conveyor = app.state.conveyor
    try:
        results = await asyncio.gather(*(batcher.submit(TaskSpec(name="t", args={"i": i})) for i in range(5)))
        assert [task.args["i"] for task, _ in results] == list(range(5))
        assert all(created for _, created in results)
        assert [t.id for t in (await conveyor.list_tasks_async()).items] == [t.id for t, _ in reversed(results)]
    finally:
        await conveyor.aclose()


async def test_batch_answers_what_reads_return(client: httpx.AsyncClient) -> None:
    parent = (await client.post("/tasks", json={"name": "p"}, headers=ADMIN)).json()
    keyed = {"name": "a", "idempotency_key": "k"}
    tasks = [{"name": "a", "args": {"i": 0}}, keyed, keyed, {"name": "c", "depends_on": [parent["id"]]}, *RICH[1:]]
    r = await client.post("/tasks/batch", json={"tasks": tasks}, headers=ADMIN)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["created"] == [True, True, False, True, True, True, True]
    assert body["items"][2]["id"] == body["items"][1]["id"] and body["items"][3]["state"] == "waiting"
    for item in body["items"]:
        assert item == (await client.get(f"/tasks/{item['id']}", headers=ADMIN)).json()
    again = await client.post("/tasks/batch", json={"tasks": [keyed]}, headers=ADMIN)
    assert again.status_code == 200 and again.json()["created"] == [False]
    assert again.json()["items"] == [body["items"][1]]


async def test_a_flush_cancelled_before_it_ran_is_replaced(db_url: str) -> None:
    app = create_app(load_settings(url=db_url))
    batcher: SubmitBatcher = app.state.submitter
    try:
        first = asyncio.ensure_future(batcher.submit(TaskSpec(name="t")))
        await asyncio.sleep(0)  # joined; its flush is scheduled, not run
        assert batcher._next is not None
        batcher._next.cancel()
        second = await asyncio.wait_for(batcher.submit(TaskSpec(name="t")), 5)
        assert (await asyncio.wait_for(first, 5))[1] and second[1]
    finally:
        await app.state.conveyor.aclose()


async def test_a_ring_shard_that_is_down_fails_only_the_submits_it_holds(tmp_path: Any) -> None:
    """A sharded ring stores a group commit's parts shard by shard: the submits whose
    shard is up succeed (and are stored once), only the others fail."""
    from conveyor.backends.sharded import ShardedBackend

    app = create_app(load_settings(url=f"shards+sqlite:///{tmp_path}/a.db,/{tmp_path}/b.db"))
    batcher: SubmitBatcher = app.state.submitter
    conveyor = app.state.conveyor
    try:
        ring = await conveyor.backend()
        assert isinstance(ring, ShardedBackend)

        async def down(params: EnqueueParams) -> list[Enqueued]:
            raise BackendUnavailable("shard 1 is down")

        ring.shards[1].task_enqueue_many = down  # type: ignore[method-assign]
        outcomes = await asyncio.gather(
            *(batcher.submit(TaskSpec(name="t", args={"i": i})) for i in range(12)), return_exceptions=True
        )
        stored = [o for o in outcomes if not isinstance(o, BaseException)]
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        assert stored and failed, "the ids should spread over both shards"
        assert all(isinstance(f, BackendUnavailable) for f in failed)
        kept = (await conveyor.list_tasks_async()).items
        assert sorted(t.id for t in kept) == sorted(task.id for task, _ in stored)  # type: ignore[misc]
    finally:
        await conveyor.aclose()
