"""The dashboard's forms: log in and out, and the ``admin`` actions.

Every action is a POST whose CSRF token and role ``render.view`` has checked before
it gets here; each calls one app method and redirects back (POST-redirect-GET), with
a fixed notice code in the URL.
"""

from __future__ import annotations

from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from conveyor.api.auth import Guard
from conveyor.backends.base import TaskFilter
from conveyor.errors import Unauthorized
from conveyor.features.flow import QueueUpdate
from conveyor.ui import params
from conveyor.ui.pages import conveyor_of
from conveyor.ui.render import PREFIX, UiError, redirect, render
from conveyor.ui.session import Viewer, sessions_of

Form = dict[str, list[str]]


def _form(request: Request) -> Form:
    form: Form = request.state.form
    return form


def _next(target: str | None) -> str:
    """Only a dashboard path: never an open redirect to another site."""
    if target and target.startswith(f"{PREFIX}") and not target.startswith("//") and "\\" not in target:
        return target
    return PREFIX


async def login_form(request: Request, viewer: Viewer) -> Response:
    if viewer.open:
        return redirect(PREFIX)
    nxt = _next(request.query_params.get("next"))
    return render(request, viewer, "login.html", nav="login", next=nxt, problem=None)


async def login(request: Request, viewer: Viewer) -> Response:
    """Check the token as the API would; on success start a new session (a new id: no fixation)."""
    form = _form(request)
    nxt = _next((form.get("next") or [""])[0])
    secret = (form.get("token") or [""])[0].strip()
    guard: Guard = request.app.state.guard
    try:
        caller = guard.identify(f"Bearer {secret}")
    except Unauthorized:
        return render(request, viewer, "login.html", 401, nav="login", next=nxt, problem="That token is not valid.")
    digest = next(t.sha256 for t in guard.tokens if t.name == caller.name) if not guard.open else None
    sessions = sessions_of(request)
    response = redirect(nxt)
    sessions.set_cookie(request, response, sessions.new(caller.name, digest))
    return response


async def logout(request: Request, viewer: Viewer) -> Response:
    sessions = sessions_of(request)
    response = redirect(f"{PREFIX}/login")
    sessions.set_cookie(request, response, sessions.new())  # an anonymous session replaces the login
    return response


def _task_url(task_id: str, done: str) -> str:
    return f"{PREFIX}/tasks/{quote(task_id, safe='')}?done={done}"


async def cancel_task(request: Request, viewer: Viewer) -> Response:
    task_id = request.path_params["task_id"]
    await conveyor_of(request).cancel_async(task_id)
    return redirect(_task_url(task_id, "cancelled"))


async def retry_task(request: Request, viewer: Viewer) -> Response:
    task_id = request.path_params["task_id"]
    await conveyor_of(request).retry_async(task_id)
    return redirect(_task_url(task_id, "retried"))


async def update_queue(request: Request, viewer: Viewer) -> Response:
    """``op`` is ``pause``, ``resume`` or ``limits`` (an empty limit field removes that limit)."""
    name = request.path_params["name"]
    if not params.QUEUE_RE.match(name):
        raise UiError(400, f"bad queue name {name[:80]!r}")
    form = _form(request)
    op = params.choice(form, "op", ["pause", "resume", "limits"])
    app = conveyor_of(request)
    if op in ("pause", "resume"):
        await app.flow_update_async(QueueUpdate(name, paused=op == "pause"))
        done = "paused" if op == "pause" else "resumed"
    elif op == "limits":
        rate = params.text(form, "rate_limit")
        concurrency = params.integer(form, "concurrency", 1, 1_000_000, None)
        reset = frozenset(k for k, v in (("rate_limit", rate), ("concurrency", concurrency)) if v is None)
        if "max_length" in form:  # an empty field removes a bound set at run time (config's applies)
            max_length = params.integer(form, "max_length", 1, 2**31 - 1, None)
            clear = [*reset, *(["max_length"] if max_length is None else [])]
            await app.queue_update_async(
                name, rate_limit=rate, concurrency=concurrency, max_length=max_length, clear=clear
            )
        else:
            await app.flow_update_async(QueueUpdate(name, rate_limit=rate, concurrency=concurrency, reset=reset))
        done = "limits"
    else:
        raise UiError(400, "missing 'op': pause, resume or limits")
    return redirect(f"{PREFIX}/queues?done={done}")


def _dlq_filter(form: Form) -> tuple[TaskFilter, dict[str, str]]:
    queue, name = params.queue(form), params.text(form, "name")
    ids = params.many(form, "ids") or None
    kept = {k: v for k, v in {"queue": queue, "name": name}.items() if v}
    return TaskFilter(queue=queue, name=name, ids=ids), kept


def _dlq_url(kept: dict[str, str], done: str) -> str:
    query = "".join(f"&{k}={quote(v, safe='')}" for k, v in kept.items())
    return f"{PREFIX}/dlq?done={done}{query}"


async def replay_dlq(request: Request, viewer: Viewer) -> Response:
    """Replay the listed ``ids``, or every dead letter matching the queue and name filter."""
    flt, kept = _dlq_filter(_form(request))
    count = await conveyor_of(request).dlq_replay_async(flt)
    return redirect(_dlq_url(kept, f"replayed:{count}"))


async def purge_dlq(request: Request, viewer: Viewer) -> Response:
    """Delete matching dead letters for good: the form must tick ``confirm``."""
    form = _form(request)
    flt, kept = _dlq_filter(form)
    if params.choice(form, "confirm", ["yes"]) != "yes":
        raise UiError(400, "tick the box to confirm: purged dead letters are deleted for good")
    count = await conveyor_of(request).dlq_purge_async(flt)
    return redirect(_dlq_url(kept, f"purged:{count}"))
