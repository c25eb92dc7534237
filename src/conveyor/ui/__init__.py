"""The web dashboard at ``/ui``: server-rendered Jinja2 pages kept live by htmx polling.

``router`` is included by the API app (``conveyor.api.create_app``), so the dashboard
shares the API's process, tokens, roles and rate limit. Its routes are plain
Starlette routes left out of the OpenAPI document: they answer HTML, not the API's
JSON. htmx is vendored in ``static/`` (no JavaScript build step, no CDN). See
docs/dashboard.md.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from conveyor.ui import actions, pages
from conveyor.ui.render import PREFIX, view

STATIC_TYPES = {"htmx.min.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
_static = {name: (resources.files(__package__) / "static" / name).read_bytes() for name in STATIC_TYPES}
_etags = {name: '"' + hashlib.sha256(body).hexdigest()[:16] + '"' for name, body in _static.items()}


async def static(request: Request) -> Response:
    """The two static files, cached for a day and revalidated by ETag."""
    name = request.path_params["name"]
    if name not in _static:
        return Response("not found", status_code=404, media_type="text/plain")
    headers = {"Cache-Control": "public, max-age=86400", "ETag": _etags[name], "X-Content-Type-Options": "nosniff"}
    if request.headers.get("if-none-match") == _etags[name]:
        return Response(status_code=304, headers=headers)
    return Response(_static[name], media_type=STATIC_TYPES[name], headers=headers)


router = APIRouter(include_in_schema=False)
_routes = [
    ("", view()(pages.overview), "GET", "ui_overview"),
    ("/live/overview", view()(pages.overview_live), "GET", "ui_overview_live"),
    ("/tasks", view()(pages.tasks), "GET", "ui_tasks"),
    ("/tasks/{task_id}", view()(pages.task_page), "GET", "ui_task"),
    ("/tasks/{task_id}/live", view()(pages.task_live), "GET", "ui_task_live"),
    ("/tasks/{task_id}/cancel", view(action=True)(actions.cancel_task), "POST", "ui_task_cancel"),
    ("/tasks/{task_id}/retry", view(action=True)(actions.retry_task), "POST", "ui_task_retry"),
    ("/workflows", view()(pages.workflows), "GET", "ui_workflows"),
    ("/workflows/{workflow_id}", view()(pages.workflow_page), "GET", "ui_workflow"),
    ("/workflows/{workflow_id}/live", view()(pages.workflow_live), "GET", "ui_workflow_live"),
    ("/workers", view()(pages.workers), "GET", "ui_workers"),
    ("/queues", view()(pages.queues), "GET", "ui_queues"),
    ("/queues/{name}", view(action=True)(actions.update_queue), "POST", "ui_queue_update"),
    ("/dlq", view()(pages.dlq), "GET", "ui_dlq"),
    ("/dlq/replay", view(action=True)(actions.replay_dlq), "POST", "ui_dlq_replay"),
    ("/dlq/purge", view(action=True)(actions.purge_dlq), "POST", "ui_dlq_purge"),
    ("/login", view(login=False)(actions.login_form), "GET", "ui_login_form"),
    ("/login", view(login=False)(actions.login), "POST", "ui_login"),
    ("/logout", view(login=False)(actions.logout), "POST", "ui_logout"),
    ("/static/{name}", static, "GET", "ui_static"),
]
for path, endpoint, method, name in _routes:
    router.add_route(PREFIX + path, endpoint, methods=[method], name=name, include_in_schema=False)

__all__ = ["router"]
