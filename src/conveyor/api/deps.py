"""Dependencies shared by the routers: the app, the role checks, common error docs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from conveyor.api.auth import Caller, require
from conveyor.api.errors import ErrorBody
from conveyor.app import Conveyor


async def get_conveyor(request: Request) -> Conveyor:
    """Async on purpose: FastAPI runs a plain ``def`` dependency in a worker thread."""
    app: Conveyor = request.app.state.conveyor
    return app


App = Annotated[Conveyor, Depends(get_conveyor)]
Reader = Annotated[Caller, Depends(require("read"))]
Submitter = Annotated[Caller, Depends(require("submit"))]
Admin = Annotated[Caller, Depends(require("admin"))]


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the given error statuses, all in the one error shape."""
    return {status: {"model": ErrorBody} for status in statuses}


# What any authenticated route may answer besides its own codes.
COMMON = errors(401, 403, 413, 422, 429, 500, 503)
