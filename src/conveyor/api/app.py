"""``create_app``: the FastAPI application behind ``conveyor api``.

The API is a thin, stateless layer over ``Conveyor``: routes parse and check input,
call one app method, and shape the answer. Nothing is kept between requests except
the per-process rate-limit buckets, so any number of instances can run behind a
load balancer on the same backend URL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from conveyor import __version__
from conveyor.api import errors, routes_ops, routes_tasks
from conveyor.api.auth import Guard
from conveyor.api.fastpath import SubmitFastPath
from conveyor.api.middleware import RequestMiddleware
from conveyor.api.submit import SubmitBatcher
from conveyor.app import Conveyor
from conveyor.config import Settings
from conveyor.ui import router as ui_router

DESCRIPTION = """Submit, watch and steer Conveyor tasks over HTTP.

Authenticate with `Authorization: Bearer <token>`; roles are `read` < `submit` < `admin`.
Every error is `{"error": {"code", "message", "details"}}`, every response carries `X-Request-ID`."""


def create_app(source: Conveyor | Settings | str | None = None) -> FastAPI:
    """The API over ``source``: a ``Conveyor``, ``Settings``, a backend URL, or the configured default."""
    if isinstance(source, Conveyor):
        conveyor = source
    elif isinstance(source, Settings):
        conveyor = Conveyor(settings=source)
    else:
        conveyor = Conveyor(source)
    config = conveyor.settings.api

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await conveyor.backend()  # open (and migrate) before the first request
        try:
            yield
        finally:
            await conveyor.aclose()

    app = FastAPI(title="Conveyor", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.conveyor = conveyor
    app.state.guard = Guard(config)
    app.state.submitter = SubmitBatcher(conveyor)
    errors.install(app, config.queue_full_retry_after)
    app.include_router(routes_tasks.router)
    app.include_router(routes_ops.router)
    app.include_router(ui_router)  # the dashboard at /ui (HTML; not in the OpenAPI document)
    # The last added is the outermost: RequestMiddleware wraps the fast path too.
    app.add_middleware(
        SubmitFastPath,
        guard=app.state.guard,
        submitter=app.state.submitter,
        retry_after=config.queue_full_retry_after,
    )
    app.add_middleware(RequestMiddleware, max_body_bytes=config.max_body_bytes, log_access=config.access_log)
    return app
