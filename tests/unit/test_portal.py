"""The sync portal: sync calls run on one event loop that the calling threads drive in turn."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.backends.base import TaskFilter
from conveyor.errors import BackendUnavailable
from conveyor.portal import Portal, PortalClosed
from conveyor.task import SubmitOptions
from tests.contract.helpers import engine_urls, format_url
from tests.services import drop_store


@pytest.fixture(params=[0.0, 0.0005], ids=["sleeping", "spinning"])
def portal(request: pytest.FixtureRequest) -> Iterator[Portal]:
    p = Portal(spin=request.param)
    yield p
    if not p.loop.is_closed():
        p.close(asyncio.sleep(0))


async def where() -> int:
    await asyncio.sleep(0)
    return threading.get_ident()


def test_an_uncontended_call_runs_in_the_calling_thread(portal: Portal) -> None:
    assert portal.run(where()) == threading.get_ident()
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(portal.run, where())
        assert other.result(5) != threading.get_ident()  # that thread drove the loop itself


def test_a_waiting_call_finishes_while_another_thread_drives(portal: Portal) -> None:
    """A short call from a second thread completes while the first thread's call still
    runs: it is handed to the loop the first thread drives."""
    release = asyncio.Event()
    started = threading.Event()

    async def long_call() -> str:
        started.set()
        await release.wait()
        return "long"

    async def short_call() -> str:
        await asyncio.sleep(0.01)
        return "short"

    with ThreadPoolExecutor(2) as pool:
        long_done = pool.submit(portal.run, long_call())
        assert started.wait(5)
        assert pool.submit(portal.run, short_call()).result(5) == "short"
        assert not long_done.done()
        portal.loop.call_soon_threadsafe(release.set)
        assert long_done.result(5) == "long"


def test_handed_calls_unfinished_when_the_caller_leaves_are_driven_by_the_helper(portal: Portal) -> None:
    """The first caller returns as soon as its own call is done; the helper thread runs
    the rest, then gives the loop back: the next lone call drives it itself again."""
    first_started, second_started, release = threading.Event(), threading.Event(), threading.Event()

    async def until(event: threading.Event) -> None:
        while not event.is_set():
            await asyncio.sleep(0.005)

    async def first_call() -> str:
        first_started.set()
        await until(second_started)  # the second call runs on this caller's loop
        return "first"

    async def second_call() -> str:
        second_started.set()
        await until(release)
        return threading.current_thread().name

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(portal.run, first_call())
        assert first_started.wait(5)
        second = pool.submit(portal.run, second_call())
        assert first.result(5) == "first"
        assert not second.done()
        release.set()
        assert second.result(5) == "conveyor-portal"
    deadline = time.monotonic() + 5
    while portal.run(where()) != threading.get_ident():  # the helper stops once idle
        assert time.monotonic() < deadline, "the helper kept the loop"
        time.sleep(0.01)


def test_errors_reach_the_caller_whether_it_drives_or_waits(portal: Portal) -> None:
    async def boom(delay: float) -> None:
        await asyncio.sleep(delay)
        raise ValueError(f"boom {delay}")

    with pytest.raises(ValueError, match="boom 0"):
        portal.run(boom(0))
    with ThreadPoolExecutor(4) as pool:
        calls = [pool.submit(portal.run, boom(d / 100)) for d in range(1, 9)]
        for d, call in enumerate(calls, start=1):
            with pytest.raises(ValueError, match=f"boom {d / 100}"):
                call.result(5)


def test_many_threads_share_the_loop_and_every_call_returns_its_own_result(portal: Portal) -> None:
    async def echo(i: int) -> int:
        await asyncio.sleep(0.001 * (i % 3))
        return i

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda i: portal.run(echo(i)), range(400))) == list(range(400))


def test_calls_from_many_threads_overlap_on_the_loop(portal: Portal) -> None:
    async def nap() -> None:
        await asyncio.sleep(0.3)

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: portal.run(nap()), range(8)))
    assert time.monotonic() - started < 0.3 * 4  # one after another would take 2.4 s


def test_close_runs_the_last_call_then_refuses_more(portal: Portal) -> None:
    closed: list[bool] = []

    async def last() -> None:
        closed.append(True)

    portal.close(last())
    assert closed == [True] and portal.loop.is_closed()
    with pytest.raises(PortalClosed):
        portal.run(where())


def test_close_lets_calls_already_handed_to_the_loop_finish(portal: Portal) -> None:
    started = {1: threading.Event(), 2: threading.Event()}

    async def slow(value: int) -> int:
        started[value].set()
        await asyncio.sleep(0.2)
        return value

    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(portal.run, slow(1))
        assert started[1].wait(5)
        second = pool.submit(portal.run, slow(2))
        assert started[2].wait(5)
        portal.close(asyncio.sleep(0))
        assert (first.result(5), second.result(5)) == (1, 2)


@pytest.fixture(params=[engine for engine in engine_urls() if not engine.startswith("shards")])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    url = format_url(engine_urls()[request.param], str(tmp_path))
    yield url
    drop_store(url)


def test_sync_submits_from_many_threads_all_land(any_url: str) -> None:
    """Each engine's connections are used by whichever thread drives the loop (SQLite's
    loop-side connection included), and concurrent callers overlap on them."""
    app = Conveyor(any_url)
    try:
        opts = SubmitOptions(queue="portal")
        with ThreadPoolExecutor(6) as pool:
            ids = list(pool.map(lambda _: app.submit("t.a", {}, opts).id, range(300)))
        stored = app.list_tasks(TaskFilter(queue="portal"), limit=500).items
        assert sorted(t.id for t in stored) == sorted(ids) and len(set(ids)) == 300
    finally:
        app.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_loop_and_connections(tmp_path: Path) -> None:
    """Without this a child (a pre-forking web server's) would drive its parent's loop
    and share its connections; now it opens its own."""
    app = Conveyor(f"sqlite:///{tmp_path / 'fork.db'}")
    parent_task = app.submit("t.a", {}).id
    pid = os.fork()
    if pid == 0:  # the child: any failure is its exit code
        code = 1
        try:
            signal.alarm(20)
            child_task = app.submit("t.a", {}).id
            code = 0 if app.get(child_task).id == child_task and app.get(parent_task) else 1
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's sync call hung")
    assert os.waitstatus_to_exitcode(done[1]) == 0
    assert len(app.list_tasks(TaskFilter(), limit=10).items) == 2  # the parent's connections still work
    app.close()


def test_a_sync_call_to_an_unreachable_engine_fails_clearly_and_the_app_stays_usable() -> None:
    app = Conveyor("redis://127.0.0.1:1/0?prefix=nowhere")  # nothing listens on port 1
    try:
        for _ in range(2):  # the failed call left the loop free for the next one
            with pytest.raises(BackendUnavailable, match=r"127\.0\.0\.1:1\b"):
                app.submit("t.a", {})
    finally:
        app.close()


async def test_the_app_is_a_context_manager_that_closes_its_connections(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ctx.db'}"

    def sync_use() -> None:
        with Conveyor(url) as app:
            app.submit("t.a", {})
            portal = app._portal
        assert app._portal is None and portal is not None and portal.loop.is_closed()

    await asyncio.to_thread(sync_use)
    async with Conveyor(url) as app:
        assert len((await app.list_tasks_async()).items) == 1
        loop = asyncio.get_running_loop()
        assert loop in app._backends
    assert loop not in app._backends  # closed on the way out
