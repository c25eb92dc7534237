"""The one error shape of the HTTP API, and how each error becomes a status code.

Every failure, ours or the framework's, leaves as
``{"error": {"code": ..., "message": ..., "details": {...}}}``. Unexpected exceptions
are logged here with their traceback and answered with a bare 500: no stack trace, no
configuration, no token ever reaches a client.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from conveyor.errors import (
    BackendUnavailable,
    ConveyorError,
    FeatureUnavailable,
    Forbidden,
    InvalidInput,
    InvalidStateTransition,
    NoWorkers,
    PayloadTooLarge,
    QueueFull,
    RateLimited,
    TaskExists,
    TaskNotFound,
    Unauthorized,
    WorkerNotFound,
)

log = logging.getLogger("conveyor.api")

# Most specific first: PayloadTooLarge is an InvalidInput.
STATUS: list[tuple[type[ConveyorError], int]] = [
    (PayloadTooLarge, 413),
    (InvalidInput, 422),
    (Unauthorized, 401),
    (Forbidden, 403),
    (TaskNotFound, 404),
    (WorkerNotFound, 404),
    (TaskExists, 409),
    (InvalidStateTransition, 409),
    (RateLimited, 429),
    (FeatureUnavailable, 501),
    (QueueFull, 503),
    (NoWorkers, 503),
    (BackendUnavailable, 503),
]

_HTTP_CODES = {404: "NotFound", 405: "MethodNotAllowed", 413: "PayloadTooLarge", 415: "UnsupportedMediaType"}


class ErrorInfo(BaseModel):
    code: str = Field(examples=["TaskNotFound"])
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    """Every error response: ``{"error": {"code", "message", "details"}}``."""

    error: ErrorInfo


def status_for(exc: ConveyorError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 400


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return JSONResponse(body, status_code=status, headers=headers)


def conveyor_error_response(exc: ConveyorError, retry_after: int = 1) -> JSONResponse:
    status = status_for(exc)
    headers: dict[str, str] = {}
    if status in (429, 503):
        headers["Retry-After"] = str(exc.details.get("retry_after", retry_after))
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="conveyor"'
    details = {k: v for k, v in exc.details.items() if _plain(v)}
    return error_response(status, exc.code, exc.message, details, headers)


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool | list | dict)


def _where(loc: Sequence[str]) -> str:
    """``["body", "tasks", "0", "name"]`` -> ``tasks.0.name``; a bare ``["body"]`` stays ``body``."""
    return ".".join(loc[1:]) or (loc[0] if loc else "input")


def install(app: FastAPI, retry_after: int) -> None:
    """Register the handlers that turn every exception into the one error shape."""

    async def on_conveyor(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ConveyorError)
        return conveyor_error_response(exc, retry_after)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = [
            {"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", "")), "type": str(err.get("type"))}
            for err in exc.errors()
        ]
        summary = "; ".join(f"{_where(p['loc'])}: {p['msg']}" for p in problems)
        return error_response(422, "ValidationError", f"invalid request: {summary}"[:2000], {"errors": problems[:50]})

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 400:  # FastAPI's "error parsing the body" (e.g. not UTF-8): invalid input
            return error_response(422, "ValidationError", f"invalid request: {exc.detail}")
        code = _HTTP_CODES.get(exc.status_code, "HTTPError")
        return error_response(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {}))

    async def on_bad_text(_: Request, exc: Exception) -> JSONResponse:
        # A lone UTF-16 surrogate ("\ud800" in the JSON) that reached an engine
        # through a field no model checks: bad input, not a server error.
        return error_response(422, "ValidationError", "invalid request: a string is not valid Unicode text")

    app.add_exception_handler(UnicodeEncodeError, on_bad_text)
    app.add_exception_handler(ConveyorError, on_conveyor)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
