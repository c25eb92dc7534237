"""The dashboard in a real browser: Debian's Chromium, driven by Playwright, against a
real ``conveyor api`` process and a real worker subprocess on one SQLite file.

One browser, one API process and one worker serve the whole module, and the steps run
in order, as an operator would take them. Set ``CONVEYOR_UI_SCREENSHOTS=docs/img`` to
refresh the README's screenshots from this run (else they go to a temporary folder).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import TOKENS
from tests.api.test_server import api_process
from tests.integration.support import WorkerProcess, spawn_worker, wait_until
from tests.ui.chromium import CHROMIUM_ARGS, find_chromium

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")

pytestmark = pytest.mark.timeout(900)  # the first test may wait for apt-get to install Chromium

WAIT_MS = 30_000  # a live update arrives within one 2 s poll; leave room for a loaded machine (make test -n auto)


class Stack:
    """The API's base URL, an admin HTTP client for setup, and where the worker's files go."""

    def __init__(self, base: str, workdir: Path, shots: Path) -> None:
        self.base, self.workdir, self.shots = base, workdir, shots
        self.http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKENS['admin']}"}, timeout=10)

    def submit(self, name: str, **fields: Any) -> str:
        r = self.http.post("/tasks", json={"name": name, **fields})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def task(self, task_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self.http.get(f"/tasks/{task_id}").json()
        return body

    def state(self, task_id: str) -> str:
        return str(self.task(task_id)["state"])

    def paused(self, queue: str) -> bool:
        return any(q["paused"] for q in self.http.get("/queues").json() if q["name"] == queue)


@pytest.fixture(scope="module")
def chromium() -> str:
    path, why = find_chromium()
    if path is None:
        message = f"NO BROWSER: Debian's chromium could not be installed ({why}); the browser tests did not run"
        warnings.warn(message, stacklevel=1)  # the warnings summary shows it even under xdist
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("ui-browser")
    url = f"sqlite:///{workdir / 'ui.db'}"
    shots = Path(os.environ.get("CONVEYOR_UI_SCREENSHOTS") or workdir / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    with api_process(url, workdir) as base:
        worker: WorkerProcess = spawn_worker(url, workdir, concurrency=2)
        stack = Stack(base, workdir, shots)
        try:
            wait_until(lambda: stack.http.get("/workers").json(), 30, "the worker to register", interval=0.1)
            yield stack
        finally:
            worker.kill_group()
            stack.http.close()


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


def logged_in(browser: Any, stack: Stack, role: str) -> Any:
    """A fresh browser context (its own cookie jar) logged in through the form."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    page.goto(f"{stack.base}/ui")
    assert "/ui/login" in page.url
    page.fill("input[name=token]", TOKENS[role])
    page.click("button[type=submit]")
    page.wait_for_url(f"{stack.base}/ui")
    return page


def shoot(page: Any, stack: Stack, name: str) -> None:
    target = stack.shots / f"{name}.png"
    page.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 5000


@pytest.fixture(scope="module")
def admin(browser: Any, stack: Stack) -> Any:
    return logged_in(browser, stack, "admin")


def test_login_page_and_live_overview(browser: Any, stack: Stack) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    console: list[str] = []
    # Errors from scripts and the CSP; a 401 from the bad login below is not one of them.
    page.on("console", lambda m: console.append(m.text) if m.type == "error" and "resource" not in m.text else None)
    page.goto(f"{stack.base}/ui/tasks")
    page.wait_for_selector("input[name=token]")
    shoot(page, stack, "login")
    page.fill("input[name=token]", "not-a-token")
    page.click("button[type=submit]")
    assert "not valid" in page.inner_text(".problem")
    page.fill("input[name=token]", TOKENS["admin"])
    page.click("button[type=submit]")
    page.wait_for_url(f"{stack.base}/ui/tasks")
    cookie = next(c for c in context.cookies() if c["name"] == "conveyor_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and TOKENS["admin"] not in cookie["value"]
    page.goto(f"{stack.base}/ui")
    before = int(page.inner_text("[data-state=succeeded]"))
    page.evaluate("window.notReloaded = true")
    stack.submit("it.record", args={"log": str(stack.workdir / "log"), "tag": "hello"}, queue="emails")
    wait_until(lambda: int(page.inner_text("[data-state=succeeded]")) > before, 30, "the overview to update")
    assert page.evaluate("window.notReloaded") is True
    assert "emails" in page.inner_text("#overview")
    assert not console, console  # htmx runs under the strict Content-Security-Policy
    context.close()


def test_pause_and_resume_a_queue_and_watch_a_task_succeed_without_reloading(admin: Any, stack: Stack) -> None:
    stack.submit("it.record", args={"log": str(stack.workdir / "log"), "tag": "first"}, queue="watch")
    queues = admin.context.new_page()
    queues.goto(f"{stack.base}/ui/queues")
    queues.click("tr[data-queue=watch] button[value=pause]")
    queues.wait_for_selector("tr[data-queue=watch] button[value=resume]")
    assert "Queue paused." in queues.inner_text(".notice") and stack.paused("watch")

    task_id = stack.submit("it.record", args={"log": str(stack.workdir / "log"), "tag": "watched"}, queue="watch")
    admin.goto(f"{stack.base}/ui/tasks/{task_id}")
    assert admin.get_attribute("#task", "data-state") == "pending"
    assert "paused" in admin.inner_text(".explain")
    admin.evaluate("window.notReloaded = true")
    shoot(admin, stack, "task-waiting")

    queues.click("tr[data-queue=watch] button[value=resume]")
    queues.wait_for_selector("tr[data-queue=watch] button[value=pause]")
    assert not stack.paused("watch")
    shoot(queues, stack, "queues")
    queues.close()

    admin.wait_for_selector("#task[data-state=succeeded]")
    assert admin.evaluate("window.notReloaded") is True  # htmx swapped the fragment; no reload
    assert '"watched"' in admin.inner_text("#result")
    assert admin.locator("#attempts tbody tr").count() == 1  # one attempt, with its worker
    shoot(admin, stack, "task")


def test_replay_a_dead_letter(admin: Any, stack: Stack) -> None:
    flag = stack.workdir / "fixed"
    task_id = stack.submit("it.needs_fix", args={"flag": str(flag)}, queue="billing")
    wait_until(lambda: stack.state(task_id) == "failed", 30, "the task to fail")
    admin.goto(f"{stack.base}/ui/tasks/{task_id}")
    assert "not fixed yet" in admin.inner_text("#task") and admin.locator("pre.traceback").count() == 1
    shoot(admin, stack, "task-failed")
    admin.goto(f"{stack.base}/ui/dlq?queue=billing")
    row = admin.locator(f"tr[data-task='{task_id}']")
    assert "not fixed yet" in row.inner_text()
    shoot(admin, stack, "dlq")
    flag.touch()  # the operator's fix
    row.locator("button", has_text="Replay").click()
    admin.wait_for_selector(".notice")
    assert "Replayed 1 dead letter" in admin.inner_text(".notice")
    wait_until(lambda: stack.state(task_id) == "succeeded", 30, "the replayed task to succeed")
    admin.goto(f"{stack.base}/ui/tasks")
    assert task_id in admin.inner_text("table.tasks")
    shoot(admin, stack, "tasks")


def test_open_a_workflow_graph(admin: Any, stack: Stack) -> None:
    log = str(stack.workdir / "flow")

    def node(key: str, *parents: str) -> dict[str, Any]:
        return {"key": key, "name": "it.record", "args": {"log": log, "tag": key}, "depends_on": list(parents)}

    nodes = [node("extract"), node("clean", "extract"), node("enrich", "extract"), node("load", "clean", "enrich")]
    r = stack.http.post("/workflows", json={"nodes": nodes})
    assert r.status_code == 201, r.text
    flow_id = r.json()["id"]
    admin.goto(f"{stack.base}/ui/workflows")
    admin.fill("input[name=id]", flow_id)
    admin.click("form.filters button")
    admin.wait_for_url(f"{stack.base}/ui/workflows/{flow_id}")
    assert admin.locator("svg a.node").count() == 4 and admin.locator("svg path.edge").count() == 4
    admin.wait_for_selector("#workflow[data-state=succeeded]")
    assert admin.locator("svg a.node[data-state=succeeded]").count() == 4
    shoot(admin, stack, "workflow")
    admin.click("svg a.node[data-key=load]")
    admin.wait_for_selector("#task[data-state=succeeded]")


def test_workers_and_overview_screenshots(admin: Any, stack: Stack) -> None:
    admin.goto(f"{stack.base}/ui/workers")
    rows = admin.inner_text("tbody")
    assert admin.locator("tbody tr").count() >= 1 and ("idle" in rows or "busy" in rows)
    shoot(admin, stack, "workers")
    admin.goto(f"{stack.base}/ui")
    admin.wait_for_selector("svg.spark")
    shoot(admin, stack, "overview")


def test_a_read_token_sees_no_action_buttons_and_is_refused_if_it_posts(browser: Any, stack: Stack) -> None:
    failed = stack.submit("it.needs_fix", args={"flag": str(stack.workdir / "never")}, queue="billing")
    wait_until(lambda: stack.state(failed) == "failed", 30, "the task to fail")
    page = logged_in(browser, stack, "read")
    for path in [f"/ui/tasks/{failed}", "/ui/queues", "/ui/dlq"]:
        page.goto(f"{stack.base}{path}")
        forms = page.locator("main form[method=post]")
        assert forms.count() == 0, path
        assert page.locator("main button", has_text="Replay").count() == 0
    csrf = page.get_attribute("header input[name=csrf]", "value")
    for url, form in [("/ui/queues/billing", {"op": "pause"}), (f"/ui/tasks/{failed}/retry", {})]:
        refused = page.context.request.post(f"{stack.base}{url}", form={"csrf": csrf, **form}, max_redirects=0)
        assert refused.status == 403 and "admin" in refused.text()
    assert not stack.paused("billing") and stack.state(failed) == "failed"
    page.context.close()
