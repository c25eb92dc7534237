"""The dashboard in-process: every page, login and session cookie, CSRF, roles, bad input."""

from __future__ import annotations

import re

import httpx
import pytest

from conveyor.ui.graph import depths, layout
from conveyor.ui.pages import Throughput
from tests.api.conftest import AppFactory
from tests.ui.conftest import TOKENS, UiClient, auth, csrf_of

PAGES = ["/ui", "/ui/live/overview", "/ui/tasks", "/ui/workflows", "/ui/workers", "/ui/queues", "/ui/dlq"]
POST_FORM = re.compile(r'<form method="post" action="([^"]+)"')


async def submit(client: httpx.AsyncClient, name: str = "email.send", **fields: object) -> dict[str, object]:
    r = await client.post("/tasks", json={"name": name, **fields}, headers=auth("admin"))
    assert r.status_code == 201, r.text
    body: dict[str, object] = r.json()
    return body


async def dead_letter(client: httpx.AsyncClient, queue: str = "default") -> str:
    """A ``failed`` task without a worker: cancelling a parent fails its waiting child."""
    parent = await submit(client, queue=queue)
    child = await submit(client, "child", queue=queue, depends_on=[parent["id"]])
    assert (await client.delete(f"/tasks/{parent['id']}", headers=auth("admin"))).status_code == 200
    state = (await client.get(f"/tasks/{child['id']}", headers=auth("admin"))).json()["state"]
    assert state == "failed"
    return str(child["id"])


def assert_html(r: httpx.Response, status: int = 200) -> str:
    assert r.status_code == status, r.text[:2000]
    assert r.headers["content-type"].startswith("text/html")
    assert "Traceback" not in r.text
    return r.text


async def test_every_page_renders_on_an_empty_store(ui: UiClient) -> None:
    admin = await ui("admin")
    for path in PAGES:
        html = assert_html(await admin.get(path))
        assert "Content-Security-Policy" in (await admin.get(path)).headers
        assert "<script" not in html.replace('<script src="/ui/static/htmx.min.js" defer></script>', "")
    assert "No task yet" in (await admin.get("/ui")).text
    assert "No task matches" in (await admin.get("/ui/tasks")).text
    assert "No dead letter" in (await admin.get("/ui/dlq")).text


async def test_a_task_that_just_failed_shows_in_the_dlq_at_once(ui: UiClient) -> None:
    """The pages share figures up to a second old; an empty count there must not hide a
    dead letter that arrived within that second."""
    admin = await ui("admin")
    assert "No dead letter" in assert_html(await admin.get("/ui/dlq"))  # the figures say 0 now
    failed = await dead_letter(admin, "billing")
    assert failed in assert_html(await admin.get("/ui/dlq"))
    assert failed in assert_html(await admin.get("/ui/dlq", params={"queue": "billing"}))


async def test_pages_show_tasks_workflows_and_dead_letters(ui: UiClient) -> None:
    admin = await ui("admin")
    task = await submit(admin, args={"to": "a@b.c"}, labels=["vip"], queue="emails")
    failed = await dead_letter(admin, "emails")
    flow = (
        await admin.post(
            "/workflows",
            headers=auth("admin"),
            json={"nodes": [{"key": "a", "name": "x"}, {"key": "b", "name": "y", "depends_on": ["a"]}]},
        )
    ).json()
    overview = assert_html(await admin.get("/ui"))
    assert 'hx-trigger="every 2s"' in overview and "emails" in overview
    listed = assert_html(await admin.get("/ui/tasks", params={"queue": "emails", "label": "vip"}))
    assert task["id"] in listed and failed not in listed
    page = assert_html(await admin.get(f"/ui/tasks/{task['id']}"))
    assert "a@b.c" in page and 'class="explain"' in page and "Cancel</button>" in page
    assert 'hx-trigger="every 2s"' in page  # pending: the page polls its fragment
    dead = assert_html(await admin.get(f"/ui/tasks/{failed}"))
    assert "Retry</button>" in dead and "dependency_failed" in dead and "hx-trigger" not in dead
    assert failed in assert_html(await admin.get("/ui/dlq", params={"queue": "emails"}))
    graph = assert_html(await admin.get(f"/ui/workflows/{flow['id']}"))
    assert graph.count('class="node s-') == 2 and '<path class="edge' in graph
    assert (await admin.get("/ui/workflows", params={"id": flow["id"]})).headers["location"].endswith(flow["id"])
    jump = await admin.get("/ui/tasks", params={"id": task["id"]})
    assert jump.status_code == 303 and jump.headers["location"] == f"/ui/tasks/{task['id']}"
    assert "emails" in assert_html(await admin.get("/ui/queues"))


async def test_many_tasks_are_listed_a_page_at_a_time(ui: UiClient) -> None:
    admin = await ui("admin")
    for chunk in range(3):
        batch = [{"name": "bulk", "args": {"i": chunk * 1000 + i}} for i in range(1000)]
        assert (await admin.post("/tasks/batch", json={"tasks": batch}, headers=auth("admin"))).status_code == 201
    first = assert_html(await admin.get("/ui/tasks"))
    assert first.count('<tr><td><a class="mono"') == 50
    cursor = re.search(r'rel="next" href="[^"]*cursor=([^"&]+)"', first)
    assert cursor
    second = assert_html(await admin.get("/ui/tasks", params={"cursor": cursor.group(1)}))
    assert second.count('<tr><td><a class="mono"') == 50 and "first page" in second
    assert 'data-state="pending">3000<' in assert_html(await admin.get("/ui/live/overview"))


@pytest.mark.parametrize(
    "path",
    [
        "/ui/tasks?state=bogus",
        "/ui/tasks?limit=0",
        "/ui/tasks?limit=many",
        "/ui/tasks?queue=bad%20queue!",
        "/ui/tasks?name=%01",
        "/ui/tasks?cursor=" + "x" * 300,
        "/ui/workers?state=asleep",
        "/ui/dlq?queue=%2F%2F",
        "/ui/tasks/" + "x" * 300,
        "/ui/workflows/" + "x" * 300,
    ],
)
async def test_bad_query_parameters_get_a_400_page(ui: UiClient, path: str) -> None:
    html = assert_html(await (await ui("read")).get(path), 400)
    assert "Bad request" in html and "bad " in html.lower()


async def test_unknown_ids_get_a_404_page(ui: UiClient) -> None:
    reader = await ui("read")
    assert "task nope not found" in assert_html(await reader.get("/ui/tasks/nope"), 404)
    assert_html(await reader.get("/ui/workflows/nope"), 404)


async def test_login_sets_a_signed_httponly_strict_cookie_without_the_token(ui: UiClient) -> None:
    client = await ui(None)
    r = await client.get("/ui/tasks?state=failed")
    assert r.status_code == 303 and r.headers["location"] == "/ui/login?next=%2Fui%2Ftasks%3Fstate%3Dfailed"
    form = await client.get("/ui/login")
    bad = await client.post("/ui/login", data={"token": "wrong", "csrf": csrf_of(form.text)})
    assert bad.status_code == 401 and "not valid" in bad.text
    good = await client.post(
        "/ui/login", data={"token": TOKENS["read"], "csrf": csrf_of(form.text), "next": "/ui/tasks?state=failed"}
    )
    assert good.status_code == 303 and good.headers["location"] == "/ui/tasks?state=failed"
    cookie = good.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie and "Secure" not in cookie
    assert TOKENS["read"] not in cookie
    assert (await client.get("/ui/tasks?state=failed")).status_code == 200


async def test_cookie_is_secure_over_https_and_a_tampered_cookie_is_refused(make_app: AppFactory) -> None:
    app = make_app()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
            form = await client.get("/ui/login")
            good = await client.post("/ui/login", data={"token": TOKENS["admin"], "csrf": csrf_of(form.text)})
            assert "Secure" in good.headers["set-cookie"]
            assert (await client.get("/ui")).status_code == 200
            value = client.cookies["conveyor_session"]
            payload, _, mac = value.rpartition(".")
            client.cookies.set("conveyor_session", payload + "x." + mac, domain="testserver", path="/ui")
            client.cookies.delete("conveyor_session", domain="testserver.local", path="/ui")
            assert (await client.get("/ui")).status_code == 303


async def test_login_refuses_an_open_redirect(ui: UiClient) -> None:
    client = await ui(None)
    form = await client.get("/ui/login")
    r = await client.post("/ui/login", data={"token": TOKENS["read"], "csrf": csrf_of(form.text), "next": "//x.org"})
    assert r.headers["location"] == "/ui"


async def test_a_polled_fragment_without_a_session_asks_htmx_to_go_to_login(ui: UiClient) -> None:
    r = await (await ui(None)).get("/ui/live/overview", headers={"HX-Request": "true"})
    assert r.status_code == 401 and r.headers["hx-redirect"].startswith("/ui/login?next=")


async def test_posts_without_a_valid_csrf_token_are_refused(ui: UiClient) -> None:
    admin, other = await ui("admin"), await ui("admin")
    task = await submit(admin)
    url = f"/ui/tasks/{task['id']}/cancel"
    assert "CSRF" in assert_html(await admin.post(url, data={}), 403)
    assert_html(await admin.post(url, data={"csrf": "forged"}), 403)
    foreign = csrf_of((await other.get("/ui/tasks")).text)  # another session's token
    assert_html(await admin.post(url, data={"csrf": foreign}), 403)
    assert_html(await admin.post(url, content=b"{}", headers={"content-type": "application/json"}), 400)
    assert (await admin.get(f"/tasks/{task['id']}", headers=auth("admin"))).json()["state"] == "pending"
    mine = csrf_of((await admin.get("/ui/tasks")).text)
    assert (await admin.post(url, data={"csrf": mine})).status_code == 303
    assert (await admin.get(f"/tasks/{task['id']}", headers=auth("admin"))).json()["state"] == "cancelled"


async def test_a_read_token_sees_no_action_and_is_refused_if_it_posts(ui: UiClient) -> None:
    admin, reader = await ui("admin"), await ui("read")
    task = await submit(admin, queue="q1")
    failed = await dead_letter(admin, "q1")
    for path in [f"/ui/tasks/{task['id']}", f"/ui/tasks/{failed}", "/ui/queues", "/ui/dlq"]:
        actions = POST_FORM.findall(assert_html(await reader.get(path)))
        assert actions == ["/ui/logout"], (path, actions)
        assert len(POST_FORM.findall(assert_html(await admin.get(path)))) > 1, path
    csrf = csrf_of((await reader.get("/ui/tasks")).text)
    attempts = {
        f"/ui/tasks/{task['id']}/cancel": {},
        f"/ui/tasks/{failed}/retry": {},
        "/ui/queues/q1": {"op": "pause"},
        "/ui/dlq/replay": {},
        "/ui/dlq/purge": {"confirm": "yes"},
    }
    for url, data in attempts.items():
        html = assert_html(await reader.post(url, data={"csrf": csrf, **data}), 403)
        assert "needs the &#39;admin&#39; role" in html
    states = {t["id"]: t["state"] for t in (await admin.get("/tasks", headers=auth("admin"))).json()["items"]}
    assert states[task["id"]] == "pending" and states[failed] == "failed"
    assert "paused" not in (await admin.get("/ui/queues")).text.split("<tbody>")[1]


async def test_admin_retries_a_failed_task_and_replays_and_purges_the_dlq(ui: UiClient) -> None:
    admin = await ui("admin")
    first, second, third = [await dead_letter(admin, "jobs") for _ in range(3)]
    csrf = csrf_of((await admin.get("/ui/dlq")).text)
    r = await admin.post(f"/ui/tasks/{first}/retry", data={"csrf": csrf})
    assert r.status_code == 303 and "sent back to pending" in (await admin.get(r.headers["location"])).text
    again = await admin.post(f"/ui/tasks/{first}/retry", data={"csrf": csrf})
    assert_html(again, 409)
    r = await admin.post("/ui/dlq/replay", data={"csrf": csrf, "ids": second})
    assert "Replayed 1 dead letter" in (await admin.get(r.headers["location"])).text
    assert_html(await admin.post("/ui/dlq/purge", data={"csrf": csrf, "queue": "jobs"}), 400)  # not confirmed
    r = await admin.post("/ui/dlq/purge", data={"csrf": csrf, "queue": "jobs", "confirm": "yes"})
    assert "Purged 1 dead letter" in (await admin.get(r.headers["location"])).text
    assert (await admin.get(f"/tasks/{third}", headers=auth("admin"))).status_code == 404


async def test_admin_pauses_resumes_and_limits_a_queue(ui: UiClient) -> None:
    admin = await ui("admin")
    await submit(admin, queue="emails")
    csrf = csrf_of((await admin.get("/ui/queues")).text)
    r = await admin.post("/ui/queues/emails", data={"csrf": csrf, "op": "pause"})
    assert r.headers["location"] == "/ui/queues?done=paused"
    page = (await admin.get("/ui/queues")).text
    assert "Queue paused." not in page and "Resume</button>" in page
    queues = (await admin.get("/queues", headers=auth("admin"))).json()
    assert [q["paused"] for q in queues if q["name"] == "emails"] == [True]
    await admin.post("/ui/queues/emails", data={"csrf": csrf, "op": "resume"})
    limits = {"csrf": csrf, "op": "limits", "rate_limit": "5/s", "concurrency": "3"}
    r = await admin.post("/ui/queues/emails", data=limits)
    assert r.status_code == 303
    page = (await admin.get("/ui/queues")).text
    assert "rate 5/s" in page and "concurrency 3" in page and "Pause</button>" in page
    await admin.post("/ui/queues/emails", data={"csrf": csrf, "op": "limits", "rate_limit": "", "concurrency": ""})
    assert "rate 5/s" not in (await admin.get("/ui/queues")).text
    for rate in ("fast", "1/.s", "9" * 5000 + "/s"):
        bad_rate = await admin.post("/ui/queues/emails", data={"csrf": csrf, "op": "limits", "rate_limit": rate})
        assert_html(bad_rate, 400)
    for done in ("replayed:²", "purged:①", "purged:" + "9" * 5000):  # a notice no action made: none shown
        assert "dead letter(s)" not in (await admin.get("/ui/dlq", params={"done": done})).text
    assert_html(await admin.post("/ui/queues/emails", data={"csrf": csrf, "op": "explode"}), 400)
    assert_html(await admin.post("/ui/queues/emails", data={"csrf": csrf, "op": "limits", "concurrency": "-1"}), 400)
    bounded = {"csrf": csrf, "op": "limits", "rate_limit": "", "concurrency": "", "max_length": "40"}
    assert (await admin.post("/ui/queues/emails", data=bounded)).status_code == 303
    assert "max 40" in (await admin.get("/ui/queues")).text
    queues = (await admin.get("/queues", headers=auth("admin"))).json()
    assert [q["max_length"] for q in queues if q["name"] == "emails"] == [40]
    assert_html(await admin.post("/ui/queues/emails", data={**bounded, "max_length": "0"}), 400)
    await admin.post("/ui/queues/emails", data={**bounded, "max_length": ""})
    assert "max 40" not in (await admin.get("/ui/queues")).text


async def test_without_tokens_the_dashboard_is_open_but_forms_still_need_csrf(make_app: AppFactory) -> None:
    app = make_app(api={"tokens": []})
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            assert (await client.get("/ui/login")).headers["location"] == "/ui"
            assert (await client.post("/tasks", json={"name": "t", "queue": "q"})).status_code == 201
            page = assert_html(await client.get("/ui/queues"))
            assert "anonymous · admin" in page
            assert_html(await client.post("/ui/queues/q", data={"op": "pause"}), 403)
            ok = await client.post("/ui/queues/q", data={"op": "pause", "csrf": csrf_of(page)})
            assert ok.status_code == 303


async def test_static_files_are_served_with_an_etag(ui: UiClient) -> None:
    client = await ui(None)
    r = await client.get("/ui/static/htmx.min.js")
    assert r.status_code == 200 and "htmx" in r.text[:200]
    again = await client.get("/ui/static/htmx.min.js", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304
    assert (await client.get("/ui/static/../app.py")).status_code == 404


async def test_the_dashboard_stays_out_of_the_openapi_document(ui: UiClient) -> None:
    schema = (await (await ui(None)).get("/openapi.json")).json()
    assert not [p for p in schema["paths"] if p.startswith("/ui")]


def test_graph_layout_puts_each_node_right_of_its_parents() -> None:
    from datetime import UTC, datetime

    from conveyor.models import Task
    from conveyor.states import State

    def node(tid: str, *parents: str) -> Task:
        now = datetime.now(UTC)
        return Task.model_construct(id=tid, depends_on=list(parents), state=State.PENDING, updated_at=now)

    nodes = {"a": node("1"), "b": node("2", "1"), "c": node("3", "1")}
    nodes |= {"d": node("4", "2", "3"), "e": node("5", "1", "4")}
    assert depths(nodes) == {"a": 0, "b": 1, "c": 1, "d": 2, "e": 3}
    drawn = layout(nodes)
    x = {b.key: b.x for b in drawn.boxes}
    assert x["a"] < x["b"] == x["c"] < x["d"] < x["e"] and len(drawn.edges) == 6
    assert layout({}).boxes == []


def test_throughput_keeps_samples_apart_and_drops_old_ones() -> None:
    chart = Throughput(every=10, keep=60)
    for t, v in [(0, 5), (3, 6), (10, 7), (50, 9), (80, 1)]:
        chart.add(v, now=t)
    assert [v for _, v in chart.samples] == [9, 1]  # 6 came too soon; 5 and 7 aged out
    points, peak = chart.points()
    assert peak == 9 and len(points.split()) == 2
