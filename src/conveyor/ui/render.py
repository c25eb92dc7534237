"""Templates, filters, and the one wrapper every dashboard route goes through.

``view`` turns a handler into a route that always answers HTML: it works out who is
asking (``session.viewer_of``), sends the not-logged-in to the login form, checks
CSRF and the ``admin`` role on every POST, and renders any refusal or failure as a
plain error page with the right status (400 for bad input, never a 500 for it).
The API's JSON error handlers never see a dashboard request's errors.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from conveyor import __version__
from conveyor.api.auth import Guard
from conveyor.api.errors import status_for
from conveyor.errors import ConveyorError, InvalidInput
from conveyor.ui.session import Viewer, sessions_of, viewer_of

PREFIX = "/ui"
MAX_FORM_BYTES = 64 * 1024

# No inline script or style anywhere: htmx and the stylesheet are served from /ui/static.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class UiError(Exception):
    """A refusal to show as an error page: ``status`` and a sentence for a person."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def fmt_dt(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_ago(value: datetime | None) -> str:
    if value is None:
        return "—"
    seconds = (datetime.now(UTC) - value).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 60:
        text = f"{seconds:.0f}s"
    elif seconds < 3600:
        text = f"{seconds / 60:.0f}m"
    elif seconds < 86400:
        text = f"{seconds / 3600:.1f}h"
    else:
        text = f"{seconds / 86400:.1f}d"
    return f"in {text}" if future else f"{text} ago"


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s" if value < 120 else f"{value / 60:.1f} min"


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


env = Environment(
    loader=PackageLoader("conveyor.ui", "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters.update(dt=fmt_dt, ago=fmt_ago, seconds=fmt_seconds, pretty=pretty)
env.globals.update(prefix=PREFIX, version=__version__, quote=urllib.parse.quote)


def render(
    request: Request,
    viewer: Viewer,
    template: str,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **ctx: Any,
) -> HTMLResponse:
    """A page or fragment for ``viewer``; a fresh session gets its cookie here."""
    ctx = {"nav": "", "notice": None} | ctx
    html = env.get_template(template).render(viewer=viewer, request=request, **ctx)
    response = HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS | (headers or {}))
    if viewer.fresh:
        sessions_of(request).set_cookie(request, response, viewer.session)
    return response


def error_page(request: Request, viewer: Viewer, status: int, message: str) -> HTMLResponse:
    titles = {400: "Bad request", 401: "Not logged in", 403: "Forbidden", 404: "Not found", 409: "Conflict"}
    title = titles.get(status, "Unavailable" if status >= 500 else "Refused")
    return render(request, viewer, "error.html", status=status, title=title, message=message)


def redirect(url: str, status: int = 303) -> RedirectResponse:
    return RedirectResponse(url, status_code=status, headers=SECURITY_HEADERS)


def login_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    url = f"{PREFIX}/login?next={urllib.parse.quote(target, safe='')}"
    if request.headers.get("hx-request"):  # a polled fragment: make htmx load the whole login page
        return Response(status_code=401, headers=SECURITY_HEADERS | {"HX-Redirect": url})
    return redirect(url)


async def read_form(request: Request) -> dict[str, list[str]]:
    """A urlencoded form body (the only kind the dashboard sends); 400 for anything else."""
    body = await request.body()
    if not body:
        return {}
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise UiError(400, "expected a form (application/x-www-form-urlencoded)")
    if len(body) > MAX_FORM_BYTES:
        raise UiError(400, "form too large")
    try:
        return urllib.parse.parse_qs(body.decode(), keep_blank_values=True, max_num_fields=1000)
    except (UnicodeDecodeError, ValueError) as exc:
        raise UiError(400, f"unreadable form: {exc}") from None


Handler = Callable[[Request, Viewer], Awaitable[Response]]


def view(*, action: bool = False, login: bool = True) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """Wrap a handler: authenticate, rate-limit, (for ``action``) check CSRF and ``admin``, render errors.

    A POST handler finds the parsed form in ``request.state.form``.
    """

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def route(request: Request) -> Response:
            viewer = viewer_of(request)
            if login and viewer.caller is None:
                return login_redirect(request)
            try:
                if viewer.caller is not None:
                    guard: Guard = request.app.state.guard
                    guard.throttle(viewer.caller)
                if request.method == "POST":
                    form = await read_form(request)
                    request.state.form = form
                    if not sessions_of(request).csrf_ok(viewer.session, (form.get("csrf") or [""])[0]):
                        raise UiError(403, "this form has expired or was not sent by this dashboard (CSRF check)")
                    if action and not viewer.admin:
                        role = viewer.caller.role if viewer.caller else "none"
                        raise UiError(403, f"this needs the 'admin' role; you are logged in with role '{role}'")
                response = await handler(request, viewer)
                if request.method == "POST":
                    request.app.state.ui_stats = None  # an action changed counts: the next page counts afresh
                return response
            except UiError as exc:
                return error_page(request, viewer, exc.status, exc.message)
            except InvalidInput as exc:
                return error_page(request, viewer, 400, exc.message)
            except ConveyorError as exc:
                return error_page(request, viewer, status_for(exc), exc.message)

        route.__name__, route.__doc__ = handler.__name__, handler.__doc__  # not ``wraps``: no signature to inspect
        return route

    return wrap
