"""The ``backend`` fixture: every contract test runs once per engine URL.

Built-in engines are ``memory://`` and ``sqlite://``; ``CONVEYOR_TEST_URLS`` plugs in
more (PostgreSQL, Redis) as comma-separated templates, see ``helpers.BUILTIN_URLS``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from conveyor.backends import Backend, make_backend
from tests.services import drop_store

from .helpers import format_url, url_params

OpenBackend = Callable[..., Awaitable[Backend]]


@pytest.fixture(params=url_params())
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a fresh, empty store for this test."""
    return format_url(str(request.param), str(tmp_path))


@pytest.fixture
async def open_backend(backend_url: str) -> AsyncIterator[OpenBackend]:
    """Open more instances on this test's URL (``offline_after=...`` optional); closed after."""
    opened: list[Backend] = []

    async def _open(offline_after: float = 30.0) -> Backend:
        backend = make_backend(backend_url, offline_after=offline_after)
        await backend.open()
        opened.append(backend)
        return backend

    yield _open
    for backend in reversed(opened):
        await backend.close()
    drop_store(backend_url)


@pytest.fixture
async def backend(open_backend: OpenBackend) -> Backend:
    """An opened engine on an empty store."""
    return await open_backend()


@pytest.fixture
async def other_backend(request: pytest.FixtureRequest, backend_url: str, tmp_path: Path) -> AsyncIterator[Backend]:
    """A second, empty store of the same engine (another file, schema or key prefix)."""
    other_tmp = tmp_path / "other"
    other_tmp.mkdir(exist_ok=True)
    url = format_url(str(request.node.callspec.params["backend_url"]), str(other_tmp))
    backend = make_backend(url)
    await backend.open()
    yield backend
    await backend.close()
    drop_store(url)
