"""Fixtures for the dashboard: the API app in-process (tests/api's fixtures) and a logged-in browser-like client."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from tests.api.conftest import TOKENS, AppFactory, auth, db_url, make_app

__all__ = ["TOKENS", "auth", "csrf_of", "db_url", "login", "make_app"]

CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF_RE.search(html)
    assert found, "no CSRF field on the page"
    return found.group(1)


async def login(client: httpx.AsyncClient, role: str) -> None:
    form = await client.get("/ui/login")
    r = await client.post("/ui/login", data={"token": TOKENS[role], "csrf": csrf_of(form.text), "next": "/ui"})
    assert r.status_code == 303, r.text


UiClient = Callable[[str | None], Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def ui(make_app: AppFactory) -> AsyncIterator[UiClient]:
    """``await ui("admin")``: a client on one app, logged in with that role (each call a new cookie jar)."""
    app = make_app()
    async with app.router.lifespan_context(app):
        clients: list[httpx.AsyncClient] = []

        async def logged_in(role: str | None) -> httpx.AsyncClient:
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
            clients.append(client)
            if role:
                await login(client, role)
            return client

        try:
            yield logged_in
        finally:
            for c in clients:
                await c.aclose()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say loudly when the browser tests could not have run (they skip without Chromium)."""
    from tests.ui.chromium import CHROMIUM

    if not CHROMIUM.exists():
        terminalreporter.write_line(f"WARNING: browser tests were SKIPPED: {CHROMIUM} is missing", red=True, bold=True)
