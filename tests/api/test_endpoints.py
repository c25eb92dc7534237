"""The endpoint matrix: every route of SPEC §7 (but /ui), its codes and shapes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from conveyor.errors import BackendUnavailable
from tests.api.conftest import AppFactory, assert_error, auth

ADMIN = auth("admin")


async def submit(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    r = await client.post("/tasks", json={"name": "email.send", **body}, headers=ADMIN)
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


async def test_submit_returns_201_with_the_task(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/tasks", json={"name": "email.send", "args": {"to": "a@b.c"}, "priority": "high"}, headers=ADMIN
    )
    assert r.status_code == 201
    task = r.json()
    assert task["state"] == "pending" and task["priority"] == 8 and task["args"] == {"to": "a@b.c"}
    assert task["history"]


async def test_idempotent_repeat_returns_200_and_the_first_task(client: httpx.AsyncClient) -> None:
    first = await submit(client, idempotency_key="order-42")
    r = await client.post("/tasks", json={"name": "email.send", "idempotency_key": "order-42"}, headers=ADMIN)
    assert r.status_code == 200
    assert r.json()["id"] == first["id"]


@pytest.mark.parametrize(
    "body",
    [{"name": ""}, {"name": "x", "priority": 11}, {"name": "x", "bogus": 1}, {"args": {}}, {"name": "x", "delay": -1}],
)
async def test_invalid_submit_is_422_in_the_error_shape(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    error = assert_error(await client.post("/tasks", json=body, headers=ADMIN), 422, "ValidationError")
    assert error["details"]["errors"]


async def test_malformed_json_is_422(client: httpx.AsyncClient) -> None:
    r = await client.post("/tasks", content=b"{not json", headers=ADMIN | {"content-type": "application/json"})
    assert_error(r, 422, "ValidationError")


async def test_batch_stores_all_in_order(client: httpx.AsyncClient) -> None:
    tasks = [{"name": "a", "args": {"i": i}} for i in range(5)]
    r = await client.post("/tasks/batch", json={"tasks": tasks}, headers=ADMIN)
    assert r.status_code == 201
    body = r.json()
    assert [t["args"]["i"] for t in body["items"]] == list(range(5))
    assert body["created"] == [True] * 5


async def test_batch_over_max_length_stores_nothing_and_is_503_with_retry_after(
    make_app: AppFactory, client_for: Any
) -> None:
    async with client_for(make_app(queues={"small": {"max_length": 3}})) as client:
        tasks = [{"name": "a", "queue": "small"} for _ in range(4)]
        r = await client.post("/tasks/batch", json={"tasks": tasks}, headers=ADMIN)
        assert_error(r, 503, "QueueFull")
        assert r.headers["retry-after"] == "1"
        listed = await client.get("/tasks", params={"queue": "small"}, headers=ADMIN)
        assert listed.json()["items"] == []
        for _ in range(3):
            await submit(client, queue="small")
        r = await client.post("/tasks", json={"name": "a", "queue": "small"}, headers=ADMIN)
        assert_error(r, 503, "QueueFull")
        assert "retry-after" in r.headers


async def test_batch_with_one_invalid_task_is_422(client: httpx.AsyncClient) -> None:
    r = await client.post("/tasks/batch", json={"tasks": [{"name": "ok"}, {"name": "bad name"}]}, headers=ADMIN)
    assert_error(r, 422, "ValidationError")
    assert (await client.get("/tasks", headers=ADMIN)).json()["items"] == []


async def test_get_task_and_404(client: httpx.AsyncClient) -> None:
    task = await submit(client)
    r = await client.get(f"/tasks/{task['id']}", headers=ADMIN)
    assert r.status_code == 200 and r.json()["id"] == task["id"]
    error = assert_error(await client.get("/tasks/nope", headers=ADMIN), 404, "TaskNotFound")
    assert "nope" in error["message"]


async def test_list_filters_and_cursor_pagination(client: httpx.AsyncClient) -> None:
    ids = [(await submit(client, queue="q1", labels=["x"] if i % 2 else []))["id"] for i in range(5)]
    await submit(client, queue="q2")
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"queue": "q1", "limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/tasks", params=params, headers=ADMIN)).json()
        seen += [t["id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))
    labelled = (await client.get("/tasks", params={"label": "x"}, headers=ADMIN)).json()["items"]
    assert len(labelled) == 2
    by_state = (await client.get("/tasks", params={"state": "cancelled"}, headers=ADMIN)).json()["items"]
    assert by_state == []
    assert_error(await client.get("/tasks", params={"state": "nope"}, headers=ADMIN), 422, "ValidationError")
    assert_error(await client.get("/tasks", params={"limit": 0}, headers=ADMIN), 422, "ValidationError")
    for bad in ("garbage", "\x00", ids[0].upper()):  # a cursor no page handed out: refused, not a silent page
        for path in ("/tasks", "/dlq"):
            r = await client.get(path, params={"cursor": bad}, headers=ADMIN)
            assert_error(r, 422, "ValidationError")
            assert "cursor" in r.json()["error"]["message"]


async def test_text_that_is_no_id_is_not_found_on_every_engine(client: httpx.AsyncClient) -> None:
    for bad in ("abc%00def", "x" * 150, "%F0%9F%98%80"):  # PostgreSQL would refuse a NUL as bad data
        for method, path in [
            ("GET", f"/tasks/{bad}"),
            ("DELETE", f"/tasks/{bad}"),
            ("POST", f"/tasks/{bad}/retry"),
            ("GET", f"/tasks/{bad}/explain"),
            ("GET", f"/workflows/{bad}"),
        ]:
            assert_error(await client.request(method, path, headers=ADMIN), 404, "TaskNotFound")


async def test_cancel_then_409_when_terminal(client: httpx.AsyncClient) -> None:
    task = await submit(client)
    r = await client.delete(f"/tasks/{task['id']}", headers=ADMIN)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert_error(await client.delete(f"/tasks/{task['id']}", headers=ADMIN), 409, "InvalidStateTransition")
    assert_error(await client.delete("/tasks/nope", headers=ADMIN), 404, "TaskNotFound")


async def failed_task(client: httpx.AsyncClient) -> dict[str, Any]:
    """A dead letter made through the API: its dependency is cancelled (``dependency_failed``)."""
    parent = await submit(client, queue="jobs")
    child = await submit(client, queue="jobs", depends_on=[parent["id"]])
    await client.delete(f"/tasks/{parent['id']}", headers=ADMIN)
    task = (await client.get(f"/tasks/{child['id']}", headers=ADMIN)).json()
    assert task["state"] == "failed"
    return task  # type: ignore[no-any-return]


async def test_retry_replays_a_failed_task_and_409_otherwise(client: httpx.AsyncClient) -> None:
    task = await failed_task(client)
    r = await client.post(f"/tasks/{task['id']}/retry", headers=ADMIN)
    assert r.status_code == 200 and r.json()["state"] == "pending"
    assert_error(await client.post(f"/tasks/{task['id']}/retry", headers=ADMIN), 409, "InvalidStateTransition")


async def test_dlq_list_replay_purge(client: httpx.AsyncClient) -> None:
    first = await failed_task(client)
    await failed_task(client)
    page = (await client.get("/dlq", headers=ADMIN)).json()
    assert len(page["items"]) == 2 and all(t["state"] == "failed" for t in page["items"])
    r = await client.post("/dlq/replay", json={"ids": [first["id"]]}, headers=ADMIN)
    assert r.json() == {"replayed": 1}
    r = await client.delete("/dlq", params={"queue": "jobs"}, headers=ADMIN)
    assert r.json() == {"purged": 1}
    assert (await client.get("/dlq", headers=ADMIN)).json()["items"] == []
    assert_error(await client.post("/dlq/replay", json={"bogus": 1}, headers=ADMIN), 422, "ValidationError")


async def test_queues_workers_stats(client: httpx.AsyncClient) -> None:
    await submit(client, queue="emails")
    queues = (await client.get("/queues", headers=ADMIN)).json()
    assert [q["name"] for q in queues] == ["emails"] and queues[0]["counts"]["pending"] == 1
    assert (await client.get("/workers", headers=ADMIN)).json() == []
    stats = (await client.get("/stats", headers=ADMIN)).json()
    assert stats["counts"]["pending"] == 1
    assert {"queues", "workers", "dlq_size", "throughput_per_second", "open_breakers"} <= set(stats)


async def test_patch_queue_pauses_and_limits(client: httpx.AsyncClient) -> None:
    await submit(client, queue="emails")
    r = await client.patch("/queues/emails", json={"paused": True, "rate_limit": "5/s"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "emails" and r.json()["paused"] is True
    assert_error(await client.patch("/queues/emails", json={"paused": "x"}, headers=ADMIN), 422, "ValidationError")
    bad_rate = await client.patch("/queues/emails", json={"rate_limit": "fast"}, headers=ADMIN)
    assert_error(bad_rate, 422, "ValidationError")
    limited = (await client.get("/queues", headers=ADMIN)).json()
    assert [q["paused"] for q in limited if q["name"] == "emails"] == [True]
    r = await client.patch("/queues/emails", json={"paused": None, "rate_limit": None}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["paused"] is False  # null removes the setting
    for huge in (2**31, 2**63, 1e30):  # refused whole: the bound given beside it is not stored either
        body = {"paused": True, "max_length": 7, "rate_limit": "5/s", "concurrency": huge}
        assert_error(await client.patch("/queues/emails", json=body, headers=ADMIN), 422, "ValidationError")
    (row,) = [q for q in (await client.get("/queues", headers=ADMIN)).json() if q["name"] == "emails"]
    assert (row["paused"], row["max_length"]) == (False, None)


async def test_patch_queue_max_length_bounds_submits_at_once_and_null_restores_config(
    make_app: AppFactory, client_for: Any
) -> None:
    async with client_for(make_app(queues={"small": {"max_length": 3}})) as client:
        r = await client.patch("/queues/small", json={"max_length": 1}, headers=ADMIN)
        assert r.status_code == 200, r.text
        assert r.json()["max_length"] == 1
        await submit(client, queue="small")
        assert_error(await client.post("/tasks", json={"name": "a", "queue": "small"}, headers=ADMIN), 503, "QueueFull")
        listed = (await client.get("/queues", headers=ADMIN)).json()
        assert [q["max_length"] for q in listed if q["name"] == "small"] == [1]
        health = (await client.get("/health", headers=ADMIN)).json()
        assert health["checks"]["queues"]["status"] == "warn" and "small (1/1)" in health["checks"]["queues"]["detail"]

        for bad in (0, -1, "many", 2**31):
            r = await client.patch("/queues/small", json={"max_length": bad}, headers=ADMIN)
            assert_error(r, 422, "ValidationError")
        r = await client.patch("/queues/small", json={"max_length": None}, headers=ADMIN)
        assert r.status_code == 200 and r.json()["max_length"] == 3  # back to config's bound
        await submit(client, queue="small")
        await submit(client, queue="small")
        assert_error(await client.post("/tasks", json={"name": "a", "queue": "small"}, headers=ADMIN), 503, "QueueFull")

        r = await client.patch("/queues/fresh", json={"max_length": 5}, headers=ADMIN)  # a queue with no tasks yet
        assert r.status_code == 200 and r.json()["max_length"] == 5


async def test_explain_says_why_a_task_waits(client: httpx.AsyncClient) -> None:
    task = await submit(client, delay=3600)
    r = await client.get(f"/tasks/{task['id']}/explain", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["task_id"] == task["id"] and r.json()["message"]
    assert_error(await client.get("/tasks/nope/explain", headers=ADMIN), 404, "TaskNotFound")


async def test_workflows_submit_get_cancel_and_422_on_a_cycle(client: httpx.AsyncClient) -> None:
    nodes = [{"key": "a", "name": "x"}, {"key": "b", "name": "y", "depends_on": ["a"]}]
    r = await client.post("/workflows", json={"nodes": nodes}, headers=ADMIN)
    assert r.status_code == 201, r.text
    wf = r.json()
    assert set(wf["nodes"]) == {"a", "b"} and wf["nodes"]["b"]["state"] == "waiting"
    assert (await client.get(f"/workflows/{wf['id']}", headers=ADMIN)).json()["id"] == wf["id"]
    cancelled = (await client.delete(f"/workflows/{wf['id']}", headers=ADMIN)).json()
    assert {t["state"] for t in cancelled["nodes"].values()} == {"cancelled"}
    cycle = [{"key": "a", "name": "x", "depends_on": ["b"]}, {"key": "b", "name": "y", "depends_on": ["a"]}]
    assert_error(await client.post("/workflows", json={"nodes": cycle}, headers=ADMIN), 422, "ValidationError")
    unknown = [{"key": "a", "name": "x", "depends_on": ["zz"]}]
    assert_error(await client.post("/workflows", json={"nodes": unknown}, headers=ADMIN), 422, "ValidationError")
    assert_error(await client.get("/workflows/nope", headers=ADMIN), 404, "TaskNotFound")


async def test_health_degraded_without_workers(client: httpx.AsyncClient) -> None:
    await submit(client)
    r = await client.get("/health")  # no token needed
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "degraded"
    assert body["checks"]["backend"]["status"] == "ok"
    assert body["checks"]["workers"]["status"] == "warn"


async def test_health_unhealthy_503_when_backend_fails(
    make_app: AppFactory, client_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()

    async def broken() -> None:
        raise BackendUnavailable("database is locked")

    monkeypatch.setattr(app.state.conveyor, "stats_async", broken)
    async with client_for(app) as client:
        r = await client.get("/health")
    assert r.status_code == 503
    assert r.json()["status"] == "unhealthy" and r.json()["checks"]["backend"]["status"] == "fail"


async def test_unknown_route_and_method_use_the_error_shape(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/nope", headers=ADMIN), 404, "NotFound")
    assert_error(await client.put("/tasks", headers=ADMIN), 405, "MethodNotAllowed")


async def test_openapi_and_docs_are_served(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert {"/tasks", "/tasks/batch", "/tasks/{task_id}", "/dlq", "/health", "/stats"} <= set(spec["paths"])
    assert (await client.get("/docs")).status_code == 200


async def test_metrics_serve_cluster_figures_to_readers(client: httpx.AsyncClient) -> None:
    await submit(client, queue="emails", priority="high")
    await submit(client, queue="emails", priority="low")
    r = await client.get("/metrics", headers=auth("read"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    lines = set(r.text.splitlines())
    assert 'conveyor_queue_depth{band="high",queue="emails"} 1.0' in lines
    assert 'conveyor_queue_depth{band="low",queue="emails"} 1.0' in lines
    assert 'conveyor_tasks{state="pending"} 2.0' in lines
    assert "conveyor_dlq_size 0.0" in lines
    assert_error(await client.get("/metrics"), 401, "Unauthorized")
