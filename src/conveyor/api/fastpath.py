"""``POST /tasks`` without FastAPI's per-request machinery, for the common request.

Dependency resolution, routing and response handling cost FastAPI a few hundred
microseconds per request: more than the submit itself. A single submit with a JSON
body, a valid token of role ``submit`` and a valid ``TaskSpec`` is answered here
with the same work the route does (authenticate, validate, rate-limit, submit, 201
with the task) and the same bytes. Anything else (another path, no JSON body, a
missing or too weak token, an invalid body) goes on to FastAPI untouched, the body
replayed, so every error keeps its exact status and shape; the checks before the
hand-over have no side effects, the rate limit is counted only once a request is
answered here. It sits inside ``RequestMiddleware``: request ids, the body limit,
the access log and the bare 500 apply as to any route.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.api.auth import RANK, Caller, Guard
from conveyor.api.errors import conveyor_error_response
from conveyor.api.submit import SubmitBatcher, dump_task
from conveyor.errors import ConveyorError
from conveyor.models import TaskSpec

_JSON_TYPES = frozenset({b"application/json", b"application/json; charset=utf-8", b"application/json;charset=utf-8"})
_SUBMIT_RANK = RANK["submit"]


class SubmitFastPath:
    def __init__(self, app: ASGIApp, *, guard: Guard, submitter: SubmitBatcher, retry_after: int) -> None:
        self.app = app
        self.guard = guard
        self.submitter = submitter
        self.retry_after = retry_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/tasks" or scope["method"] != "POST" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        content_type = authorization = length = None
        for key, value in scope["headers"]:  # the first of each, as ``request.headers.get`` reads them
            if key == b"content-type" and content_type is None:
                content_type = value
            elif key == b"authorization" and authorization is None:
                authorization = value
            elif key == b"content-length" and length is None:
                length = value
        # Only a plain JSON body of declared length: chunked bodies, other media types
        # and their errors are FastAPI's business.
        if length is None or content_type is None or content_type.lower() not in _JSON_TYPES:
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        chunks: list[bytes] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        checked = self._check(b"".join(chunks), authorization) if message["type"] == "http.request" else None
        if checked is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        spec, caller = checked
        try:
            self.guard.throttle(caller)
            task, created = await self.submitter.submit(spec)
        except ConveyorError as exc:
            await conveyor_error_response(exc, self.retry_after)(scope, _replay(messages, receive), send)
            return
        body = dump_task(task)
        headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 201 if created else 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _check(self, body: bytes, authorization: bytes | None) -> tuple[TaskSpec, Caller] | None:
        """The spec and caller when this request is ours to answer, else ``None``
        (nothing counted or stored yet)."""
        try:
            caller = self.guard.identify(None if authorization is None else authorization.decode("latin-1"))
        except ConveyorError:
            return None
        if RANK[caller.role] < _SUBMIT_RANK:
            return None
        # Any failure (bad JSON or UTF-8, nesting too deep for the parser, an invalid
        # spec) is left to the route, which parses and validates the same way and
        # answers it in its own words.
        try:
            data: Any = json.loads(body)
            if not isinstance(data, dict):
                return None
            return TaskSpec.model_validate(data), caller
        except Exception:
            return None


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` that first hands out the messages already read."""
    queued = list(messages)

    async def replay() -> Message:
        if queued:
            return queued.pop(0)
        return await receive()

    return replay
