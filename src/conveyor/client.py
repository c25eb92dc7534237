"""An HTTP client for ``conveyor api``: submit and steer tasks without importing task code.

``AsyncClient`` is the implementation (httpx); ``Client`` is its sync face, running
it on a private event-loop thread. Both raise the same ``ConveyorError`` subclasses
the server reported (``TaskNotFound``, ``QueueFull``, ``Unauthorized``...), rebuilt
from the error shape. Their methods mirror ``Conveyor``'s, so the CLI can drive
either one::

    from conveyor.client import Client
    with Client("http://conveyor:8000", token="cvy_...") as c:
        task = c.submit("email.send", {"to": "a@b.c"})
        c.get(task.id).state
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import httpx

from conveyor import errors
from conveyor.app import spec_from
from conveyor.backends.base import TaskFilter
from conveyor.models import Page, QueueInfo, Stats, Task, TaskSpec, WorkerInfo
from conveyor.task import SubmitOptions

T = TypeVar("T")

_BY_CODE: dict[str, type[errors.ConveyorError]] = {
    cls.code: cls
    for cls in (
        errors.InvalidInput,
        errors.PayloadTooLarge,
        errors.QueueFull,
        errors.TaskNotFound,
        errors.TaskExists,
        errors.NoWorkers,
        errors.WorkerNotFound,
        errors.InvalidStateTransition,
        errors.RateLimited,
        errors.Unauthorized,
        errors.Forbidden,
        errors.FeatureUnavailable,
        errors.BackendUnavailable,
    )
}


@dataclass(frozen=True, slots=True)
class Submitted:
    """A submit's answer: the stored task, and whether this call created it."""

    task: Task
    created: bool

    @property
    def id(self) -> str:
        return self.task.id


def error_from(response: httpx.Response) -> errors.ConveyorError:
    """The ``ConveyorError`` an error response describes (``ConveyorError`` when unknown)."""
    try:
        body = response.json()["error"]
        code, message, details = str(body["code"]), str(body["message"]), dict(body.get("details") or {})
    except (ValueError, KeyError, TypeError):
        code, message, details = "HTTPError", f"HTTP {response.status_code}: {response.text[:200]}", {}
    cls = _BY_CODE.get(code, errors.ConveyorError)
    exc = cls(message, **details)
    if cls is errors.ConveyorError:
        exc.code = code
    return exc


def check_url(url: str) -> str:
    """``url`` without its trailing ``/``; bad input unless it is ``http(s)://host[:port][/path]``."""
    expected = "expected http://host:port or https://host[:port]"
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise errors.InvalidInput(f"invalid API URL {url!r}: {exc} ({expected})") from None
    port_ok = parsed.port is None or 0 < parsed.port < 65536
    if parsed.scheme not in ("http", "https") or not parsed.host or not port_ok:
        raise errors.InvalidInput(f"invalid API URL {url!r}: {expected}")
    return url.rstrip("/")


def _json(response: httpx.Response) -> Any:
    """The decoded body; one that is not JSON means the URL is not a Conveyor API."""
    try:
        return response.json()
    except ValueError:
        kind = response.headers.get("content-type") or "no content type"
        raise errors.ConveyorError(
            f"{response.url} answered {kind}, not JSON: is it a Conveyor API's base URL?"
        ) from None


def _filter_params(flt: TaskFilter | None) -> dict[str, str]:
    if flt is None:
        return {}
    params = {"state": flt.state.value if flt.state else None, "queue": flt.queue, "name": flt.name}
    params["label"] = flt.label
    return {k: v for k, v in params.items() if v is not None}


class AsyncClient:
    """Async client for one Conveyor API base URL, with an optional bearer token."""

    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(base_url=check_url(base_url), headers=headers, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send one request; the decoded JSON body, or the server's error raised."""
        return _json(await self._send(method, path, **kwargs))

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise errors.BackendUnavailable(f"cannot reach the Conveyor API at {self.http.base_url}: {exc}") from exc
        if response.status_code >= 400:
            raise error_from(response)
        return response

    async def submit(
        self, name: str, args: dict[str, Any] | None = None, opts: SubmitOptions | None = None
    ) -> Submitted:
        spec = spec_from(name, args or {}, opts or SubmitOptions())
        return await self.submit_spec(spec)

    async def submit_spec(self, spec: TaskSpec) -> Submitted:
        body = spec.model_dump(mode="json", exclude_unset=True)
        response = await self._send("POST", "/tasks", json=body)
        return Submitted(Task.model_validate(_json(response)), created=response.status_code == 201)

    async def submit_batch(self, specs: Sequence[TaskSpec]) -> list[Submitted]:
        body = {"tasks": [s.model_dump(mode="json", exclude_unset=True) for s in specs]}
        data = await self.request("POST", "/tasks/batch", json=body)
        return [Submitted(Task.model_validate(t), c) for t, c in zip(data["items"], data["created"], strict=True)]

    async def get(self, task_id: str) -> Task:
        return Task.model_validate(await self.request("GET", f"/tasks/{task_id}"))

    async def list_tasks(self, flt: TaskFilter | None = None, limit: int = 50, cursor: str | None = None) -> Page:
        params: dict[str, Any] = _filter_params(flt) | {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        return Page.model_validate(await self.request("GET", "/tasks", params=params))

    async def cancel(self, task_id: str) -> Task:
        return Task.model_validate(await self.request("DELETE", f"/tasks/{task_id}"))

    async def retry(self, task_id: str) -> Task:
        return Task.model_validate(await self.request("POST", f"/tasks/{task_id}/retry"))

    async def stats(self) -> Stats:
        return Stats.model_validate(await self.request("GET", "/stats"))

    async def workers(self) -> list[WorkerInfo]:
        return [WorkerInfo.model_validate(w) for w in await self.request("GET", "/workers")]

    async def queues(self) -> list[QueueInfo]:
        return [QueueInfo.model_validate(q) for q in await self.request("GET", "/queues")]

    async def queue_update(self, name: str, changes: dict[str, Any]) -> QueueInfo:
        """``PATCH /queues/{name}``: ``paused``, ``rate_limit``, ``concurrency``; ``None`` removes."""
        return QueueInfo.model_validate(await self.request("PATCH", f"/queues/{name}", json=changes))

    async def dlq_replay(self, flt: TaskFilter | None = None) -> int:
        flt = flt or TaskFilter()
        body = {"queue": flt.queue, "name": flt.name, "ids": list(flt.ids) if flt.ids is not None else None}
        data = await self.request("POST", "/dlq/replay", json={k: v for k, v in body.items() if v is not None})
        return int(data["replayed"])

    async def dlq_purge(self, flt: TaskFilter | None = None) -> int:
        params = _filter_params(flt)
        params.pop("state", None)
        return int((await self.request("DELETE", "/dlq", params=params))["purged"])

    async def health(self) -> dict[str, Any]:
        response = await self.http.get("/health")
        data: dict[str, Any] = _json(response)
        return data


class Client:
    """The sync face of ``AsyncClient``: same methods, run on a private loop thread."""

    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 30.0) -> None:
        check_url(base_url)  # before the loop thread starts: nothing to clean up on bad input
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="conveyor-client", daemon=True)
        self._thread.start()
        self._async = self._run(_make_async(base_url, token, timeout))

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_running():
            self._run(self._async.aclose())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    def submit(self, name: str, args: dict[str, Any] | None = None, opts: SubmitOptions | None = None) -> Submitted:
        return self._run(self._async.submit(name, args, opts))

    def submit_batch(self, specs: Sequence[TaskSpec]) -> list[Submitted]:
        return self._run(self._async.submit_batch(specs))

    def get(self, task_id: str) -> Task:
        return self._run(self._async.get(task_id))

    def list_tasks(self, flt: TaskFilter | None = None, limit: int = 50, cursor: str | None = None) -> Page:
        return self._run(self._async.list_tasks(flt, limit, cursor))

    def cancel(self, task_id: str) -> Task:
        return self._run(self._async.cancel(task_id))

    def retry(self, task_id: str) -> Task:
        return self._run(self._async.retry(task_id))

    def stats(self) -> Stats:
        return self._run(self._async.stats())

    def workers(self) -> list[WorkerInfo]:
        return self._run(self._async.workers())

    def queues(self) -> list[QueueInfo]:
        return self._run(self._async.queues())

    def queue_update(self, name: str, changes: dict[str, Any]) -> QueueInfo:
        return self._run(self._async.queue_update(name, changes))

    def dlq_replay(self, flt: TaskFilter | None = None) -> int:
        return self._run(self._async.dlq_replay(flt))

    def dlq_purge(self, flt: TaskFilter | None = None) -> int:
        return self._run(self._async.dlq_purge(flt))

    def health(self) -> dict[str, Any]:
        return self._run(self._async.health())


async def _make_async(base_url: str, token: str | None, timeout: float) -> AsyncClient:
    return AsyncClient(base_url, token, timeout=timeout)  # built on the loop that will use it
