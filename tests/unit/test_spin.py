"""Spin-then-sleep selectors and loops (conveyor.spin): a wait polls for a moment
before it blocks, stops spinning when it does not pay, and never waits longer or
shorter than asked."""

from __future__ import annotations

import asyncio
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from conveyor import Conveyor, spin
from conveyor.config import Settings
from conveyor.spin import SpinSelector, new_event_loop


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def record_platform(monkeypatch: pytest.MonkeyPatch) -> list[float | None]:
    """The timeouts of every blocking wait the platform selector is given during the test."""
    blocking: list[float | None] = []
    base = selectors.DefaultSelector.select

    def platform(self: selectors.BaseSelector, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None or timeout > 0:
            blocking.append(timeout)
        return base(self, timeout)

    monkeypatch.setattr(selectors.DefaultSelector, "select", platform)
    monkeypatch.setattr(spin, "spinning_helps", lambda: True)
    return blocking


def watching(sock: socket.socket, window: float, allow: Callable[[], bool] | None = None) -> SpinSelector:
    """A spinning selector that waits for ``sock`` to be readable."""
    sel = SpinSelector(window, allow)
    sel.register(sock, selectors.EVENT_READ)
    return sel


def write_later(sock: socket.socket, delay: float) -> threading.Thread:
    def go() -> None:
        time.sleep(delay)
        sock.send(b"x")

    t = threading.Thread(target=go)
    t.start()
    return t


def test_a_reply_within_the_window_is_caught_without_sleeping(
    pair: tuple[socket.socket, socket.socket], record_platform: list[float | None]
) -> None:
    a, b = pair
    sel = watching(a, 2.0)
    writer = write_later(b, 0.01)
    ready = sel.select(None)
    writer.join()
    assert [key.fileobj for key, _ in ready] == [a]
    assert record_platform == []  # only polls: the thread never slept
    sel.close()


@pytest.mark.parametrize(("window", "timeout"), [(0.005, 0.05), (1.0, 0.02)], ids=["longer", "shorter"])
def test_a_wait_lasts_its_timeout_whether_longer_or_shorter_than_the_window(
    pair: tuple[socket.socket, socket.socket], record_platform: list[float | None], window: float, timeout: float
) -> None:
    """Past the window it sleeps for the rest of the timeout; within it, stops at the timeout."""
    a, _ = pair
    sel = watching(a, window)
    start = time.perf_counter()
    assert sel.select(timeout) == []
    assert timeout <= time.perf_counter() - start < timeout + 0.5
    rest = [pytest.approx(timeout - window, abs=1e-6)] if window < timeout else []
    assert record_platform == rest
    sel.close()


def test_spinning_stops_when_it_misses_and_is_tried_again_now_and_then(
    pair: tuple[socket.socket, socket.socket], record_platform: list[float | None]
) -> None:
    a, b = pair
    sel = watching(a, 0.001)
    spun = []
    for _ in range(40):
        before = time.perf_counter()
        sel.select(0.0011)
        spun.append(record_platform.pop() < 0.0005 if record_platform else True)
        assert time.perf_counter() - before >= 0.0011
    # the first wait spins and misses; then only one wait in 16 spins (a probe)
    assert spun[0] and not any(spun[1:16]) and spun[16]
    assert sum(spun) == 3
    # a probe that catches a reply resumes spinning at once
    while len(spun) % 16:
        sel.select(0.0011)
        spun.append(record_platform.pop() < 0.0005)
    assert not any(spun[33:])
    writer = write_later(b, 0.0)
    writer.join()
    assert sel.select(None)  # the probe: data is there at the first poll
    assert record_platform == []
    a.recv(1)
    sel.window = 2.0  # wide enough to be sure to catch the next write
    writer = write_later(b, 0.01)
    assert sel.select(None)  # spins again, and catches it
    writer.join()
    assert record_platform == []
    sel.close()


def test_long_waits_do_not_stop_spinning(
    pair: tuple[socket.socket, socket.socket], record_platform: list[float | None]
) -> None:
    """Waits far longer than the window (a result awaited for seconds, an idle loop)
    cost one window each and leave the next fast reply to be caught."""
    a, b = pair
    sel = watching(a, 0.001)
    for _ in range(6):
        assert sel.select(0.02) == []
        assert record_platform.pop() == pytest.approx(0.019, abs=1e-6)  # spun first, every time
    writer = write_later(b, 0.0)
    writer.join()
    assert sel.select(None)
    assert record_platform == []
    sel.close()


def test_no_spin_while_allow_says_no(
    pair: tuple[socket.socket, socket.socket], record_platform: list[float | None]
) -> None:
    a, b = pair
    allowed = False
    sel = watching(a, 2.0, allow=lambda: allowed)
    writer = write_later(b, 0.01)
    assert sel.select(None)
    writer.join()
    assert record_platform == [None]  # it slept at once
    allowed = True
    a.recv(1)
    writer = write_later(b, 0.01)
    assert sel.select(None)
    writer.join()
    assert record_platform == [None]
    sel.close()


def test_one_cpu_never_spins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spin.os, "sched_getaffinity", lambda _pid: {0})
    assert not spin.spinning_helps()
    assert SpinSelector(window=0.001).window == 0.0
    monkeypatch.setattr(spin.os, "sched_getaffinity", lambda _pid: {0, 1})
    assert SpinSelector(window=0.001).window == 0.001


def test_a_spinning_loop_runs_io_and_timers_as_asyncio_does(record_platform: list[float | None]) -> None:
    """A TCP round trip, and a timer that fires neither early nor much late."""

    async def main() -> tuple[bytes, float]:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readexactly(4))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        reply = await reader.readexactly(4)
        writer.close()
        server.close()
        await server.wait_closed()
        start = time.perf_counter()
        await asyncio.sleep(0.02)
        return reply, time.perf_counter() - start

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        assert isinstance(runner.get_loop()._selector, SpinSelector)  # type: ignore[attr-defined]
        reply, slept = runner.run(main())
    assert reply == b"ping"
    assert 0.02 <= slept < 0.5


def test_window_zero_is_a_plain_loop() -> None:
    loop = new_event_loop(0.0)
    try:
        assert not isinstance(loop._selector, SpinSelector)  # type: ignore[attr-defined]
    finally:
        loop.close()


def test_the_sync_loop_spins_as_configured() -> None:
    """``loop_spin`` reaches the portal's selector; 0 turns spinning off."""
    for value, spins in ((0.0005, True), (0.0, False)):
        app = Conveyor(settings=Settings(url="memory://", loop_spin=value))
        app.run_sync(asyncio.sleep(0))
        selector = app._sync_portal().loop._selector  # type: ignore[attr-defined]
        assert (isinstance(selector, SpinSelector) and selector.window > 0) == (spins and spin.spinning_helps())
        app.close()
