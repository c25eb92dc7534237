"""Fixtures for the HTTP API: the app in-process over a temporary SQLite file, with tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from conveyor.api import create_app
from conveyor.api.auth import hash_token
from conveyor.config import load_settings

TOKENS = {"read": "tok-read", "submit": "tok-submit", "admin": "tok-admin"}


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def token_config() -> list[dict[str, str]]:
    return [{"name": f"{role}-token", "role": role, "sha256": hash_token(secret)} for role, secret in TOKENS.items()]


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'api.db'}"


AppFactory = Callable[..., FastAPI]


@pytest.fixture
def make_app(db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AppFactory:
    """Build an API app; ``api``, ``url`` and other keyword settings override the test defaults."""
    monkeypatch.chdir(tmp_path)  # no stray conveyor.yaml
    monkeypatch.delenv("CONVEYOR_CONFIG", raising=False)

    def build(**overrides: Any) -> FastAPI:
        api = {"tokens": token_config(), "rate_limit": 0, "access_log": True} | overrides.pop("api", {})
        return create_app(load_settings(url=overrides.pop("url", db_url), api=api, **overrides))

    return build


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[[FastAPI], Any]]:
    """``async with client_for(app) as c``: an httpx client on the app, lifespan run."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def open_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                yield client

    yield open_client


@pytest.fixture
async def client(make_app: AppFactory, client_for: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(make_app()) as c:
        yield c


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert "Traceback" not in response.text
    return body["error"]  # type: ignore[no-any-return]
