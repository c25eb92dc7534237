"""One ASGI middleware for what every request shares.

It assigns the request id (the caller's ``X-Request-ID`` when it is sane, else a new
one) and echoes it on the response, refuses bodies over the size limit with 413,
turns any exception that escaped the routes into a bare 500 in the error shape (the
traceback goes to the server log only), and writes one JSON access-log line.
A plain ASGI class rather than ``BaseHTTPMiddleware``: it costs microseconds per request.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.errors import PayloadTooLarge
from conveyor.logs import request_id_var

access_log = logging.getLogger("conveyor.api.access")
error_log = logging.getLogger("conveyor.api")

_SANE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id_from(scope: Scope) -> str:
    for key, value in scope.get("headers", ()):
        if key == b"x-request-id":
            text: str = bytes(value).decode("latin-1")
            if _SANE_ID.match(text):
                return text
            break
    return uuid.uuid4().hex


class _TooLarge(Exception):
    pass


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body over the {limit}-byte limit", limit=limit)


class RequestMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, log_access: bool = True) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.log_access = log_access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = request_id_from(scope)
        scope.setdefault("state", {})["request_id"] = rid
        rid_header = (b"x-request-id", rid.encode())
        status = 500
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        token = request_id_var.set(rid)  # every log line of this request carries it (conveyor.logs)
        try:
            if self._declared_length(scope) > self.max_body:
                raise _TooLarge
            await self.app(scope, self._limited(receive), send_wrapper)
        except _TooLarge:
            if not response_started:
                exc = _too_large(self.max_body)
                await _send_error(send_wrapper, 413, exc.code, exc.message, exc.details)
        except Exception:
            error_log.exception("unhandled error", extra={"request_id": rid})
            if not response_started:
                await _send_error(send_wrapper, 500, "InternalError", f"internal error (request id {rid})", {})
        finally:
            if self.log_access and access_log.isEnabledFor(logging.INFO):
                # A record made here, not by ``access_log.info(extra=...)``: that one walks
                # the stack for the caller's file and line, a third of the cost of a line.
                record = logging.LogRecord(access_log.name, logging.INFO, __file__, 0, "request", None, None)
                fields = record.__dict__
                fields["request_id"] = rid
                fields["method"] = scope["method"]
                fields["path"] = scope["path"]
                fields["status"] = status
                fields["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
                access_log.handle(record)
            request_id_var.reset(token)

    @staticmethod
    def _declared_length(scope: Scope) -> int:
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    return 0
        return 0

    def _limited(self, receive: Receive) -> Receive:
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:  # a chunked body with no Content-Length: stop reading
                    # An HTTPException passes through FastAPI's body parsing to the error handlers.
                    raise HTTPException(413, _too_large(self.max_body).message)
            return message

        return limited


async def _send_error(send: Send, status: int, code: str, message: str, details: dict[str, Any]) -> None:
    body = json.dumps({"error": {"code": code, "message": message, "details": details}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
