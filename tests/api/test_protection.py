"""Auth (401 vs 403), the per-token rate limit, the body limit, request ids, logs, no leaks."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest

from conveyor.api.auth import hash_token
from conveyor.logs import formatter
from tests.api.conftest import TOKENS, AppFactory, assert_error, auth


async def test_missing_token_is_401_with_www_authenticate(client: httpx.AsyncClient) -> None:
    r = await client.get("/tasks")
    assert_error(r, 401, "Unauthorized")
    assert r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", ["Bearer wrong", "Basic dG9rLWFkbWluOg==", "Bearer ", "tok-admin"])
async def test_invalid_token_is_401(client: httpx.AsyncClient, header: str) -> None:
    assert_error(await client.get("/tasks", headers={"Authorization": header}), 401, "Unauthorized")


@pytest.mark.parametrize(
    ("method", "path", "body", "least"),
    [
        ("GET", "/tasks", None, "read"),
        ("GET", "/stats", None, "read"),
        ("GET", "/queues", None, "read"),
        ("GET", "/workers", None, "read"),
        ("GET", "/dlq", None, "read"),
        ("POST", "/tasks", {"name": "a"}, "submit"),
        ("POST", "/tasks/batch", {"tasks": [{"name": "a"}]}, "submit"),
        ("DELETE", "/tasks/x", None, "admin"),
        ("POST", "/tasks/x/retry", None, "admin"),
        ("POST", "/dlq/replay", {}, "admin"),
        ("DELETE", "/dlq", None, "admin"),
        ("PATCH", "/queues/q", {"paused": True}, "admin"),
    ],
)
async def test_roles_read_submit_admin(
    client: httpx.AsyncClient, method: str, path: str, body: Any, least: str
) -> None:
    order = ["read", "submit", "admin"]
    for role in order:
        r = await client.request(method, path, json=body, headers=auth(role))
        if order.index(role) < order.index(least):
            error = assert_error(r, 403, "Forbidden")
            assert error["details"]["needs"] == least
        else:
            assert r.status_code not in (401, 403), (role, r.text)


async def test_errors_never_echo_a_secret(client: httpx.AsyncClient) -> None:
    for role in ("read", "submit"):
        r = await client.delete("/tasks/x", headers=auth(role))
        assert TOKENS[role] not in r.text and hash_token(TOKENS[role]) not in r.text
    r = await client.get("/openapi.json")
    assert not any(secret in r.text for secret in TOKENS.values())


async def test_unexpected_error_is_a_bare_500_logged_server_side(
    make_app: AppFactory, client_for: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()

    async def boom(task_id: str) -> None:
        raise RuntimeError("secret=hunter2 in a bug")

    monkeypatch.setattr(app.state.conveyor, "get_async", boom)
    async with client_for(app) as client:
        with caplog.at_level(logging.ERROR, logger="conveyor.api"):
            r = await client.get("/tasks/abc", headers=auth("read") | {"X-Request-ID": "req-500"})
    error = assert_error(r, 500, "InternalError")
    assert "hunter2" not in r.text and "RuntimeError" not in r.text
    assert "req-500" in error["message"] and r.headers["x-request-id"] == "req-500"
    assert any(rec.exc_info and "hunter2" in str(rec.exc_info[1]) for rec in caplog.records)


async def test_rate_limit_is_per_token_with_retry_after(make_app: AppFactory, client_for: Any) -> None:
    async with client_for(make_app(api={"rate_limit": 0.5, "rate_burst": 3})) as client:
        codes = [(await client.get("/stats", headers=auth("read"))).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = await client.get("/stats", headers=auth("read"))
        assert_error(r, 429, "RateLimited")
        assert int(r.headers["retry-after"]) >= 1
        assert (await client.get("/stats", headers=auth("admin"))).status_code == 200  # another token's bucket


async def test_body_over_limit_is_413(make_app: AppFactory, client_for: Any) -> None:
    async with client_for(make_app(api={"max_body_bytes": 2048})) as client:
        big = {"name": "a", "args": {"blob": "x" * 5000}}
        assert_error(await client.post("/tasks", json=big, headers=auth("admin")), 413, "PayloadTooLarge")

        async def chunks() -> Any:  # no Content-Length: counted while read
            yield json.dumps(big).encode()

        headers = auth("admin") | {"content-type": "application/json"}
        assert_error(await client.post("/tasks", content=chunks(), headers=headers), 413, "PayloadTooLarge")
        ok = await client.post("/tasks", json={"name": "a"}, headers=auth("admin"))
        assert ok.status_code == 201


async def test_request_id_is_echoed_or_generated(client: httpx.AsyncClient) -> None:
    r = await client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    generated = (await client.get("/health")).headers["x-request-id"]
    assert len(generated) == 32
    r = await client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})
    assert r.headers["x-request-id"] != "bad id\twith spaces"
    assert (await client.get("/tasks")).headers["x-request-id"]  # error responses too
    assert (await client.get("/nope")).headers["x-request-id"]


async def test_access_log_is_json_with_request_fields(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="conveyor.api.access"):
        await client.get("/stats", headers=auth("read") | {"X-Request-ID": "log-1"})
    (record,) = [r for r in caplog.records if r.name == "conveyor.api.access"]
    line = json.loads(formatter("json").format(record))
    assert line["request_id"] == "log-1" and line["method"] == "GET" and line["path"] == "/stats"
    assert line["status"] == 200 and line["duration_ms"] >= 0


async def test_without_tokens_everyone_is_admin(make_app: AppFactory, client_for: Any) -> None:
    async with client_for(make_app(api={"tokens": []})) as client:
        assert (await client.post("/tasks", json={"name": "a"})).status_code == 201
        assert (await client.delete("/dlq")).status_code == 200
