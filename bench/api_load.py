"""Submits per second through one ``conveyor api`` process, single and batched.

Starts ``conveyor api`` on a fresh SQLite file, or on ``--url``'s engine under a schema or
key prefix of its own (rate limit off, auth on), then drives
it from separate load-generator processes (``--connections`` keep-alive connections
in all, each with one request in flight) and reports throughput, p50/p99 latency and
the API process's CPU time per request, the median of ``--runs`` runs::

    .venv/bin/python bench/api_load.py                 # single and batch, 3 runs each
    .venv/bin/python bench/api_load.py --mode single --seconds 5 --json
    .venv/bin/python bench/api_load.py --client httpx  # the same load through httpx.AsyncClient
    .venv/bin/python bench/api_load.py --url postgresql://127.0.0.1/test   # on PostgreSQL

Two clients: ``raw`` (default) writes prebuilt HTTP/1.1 requests on asyncio
connections and reads the answers by ``Content-Length``, tens of microseconds per
request; ``httpx`` is the ordinary async client, about ten times that. On a 2-core
machine the generator and the server share the CPUs, so a heavy generator takes the
core the server would use: ``raw`` measures the server, ``httpx`` a typical client.

``server_cpu_us`` (user + system time of the API process over the run, per request)
is the figure to compare across changes: wall-clock rates move with whatever else
runs on the machine, CPU per request much less. ``server_runq`` is the share of the
run the API process was ready to run but waited for a CPU (from
``/proc/PID/schedstat``): well above 0 means the machine was busy and the rate says
more about the load than about Conveyor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import httpx

from conveyor.bench import Scratch

TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_api(url: str, port: int, log: Path, access_log: bool) -> subprocess.Popen[bytes]:
    import hashlib

    tokens = [{"name": "bench", "role": "submit", "sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")} | {
        "CONVEYOR_URL": url,
        "CONVEYOR_API__TOKENS": json.dumps(tokens),
        "CONVEYOR_API__RATE_LIMIT": "0",
        "CONVEYOR_API__ACCESS_LOG": "true" if access_log else "false",
    }
    out = log.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "api", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=out,
        stderr=out,
        cwd=log.parent,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"conveyor api did not start; see {log}")


def _body(mode: str, batch: int, worker: int, i: int) -> tuple[str, bytes, int]:
    """Path, JSON body and task count of request ``i`` of connection ``worker``."""
    if mode == "single":
        return "/tasks", json.dumps({"name": "bench.noop", "args": {"w": worker, "i": i}}).encode(), 1
    tasks = [{"name": "bench.noop", "args": {"w": worker, "i": i, "j": j}} for j in range(batch)]
    return "/tasks/batch", json.dumps({"tasks": tasks}).encode(), batch


async def _drive_httpx(base: str, mode: str, batch: int, connections: int, seconds: float) -> tuple[int, list[float]]:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    latencies: list[float] = []
    done = 0
    stop = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=30) as client:

        async def one_loop(worker: int) -> None:
            nonlocal done
            i = 0
            while i == 0 or time.perf_counter() < stop:  # at least one request, however slow the start
                i += 1
                path, body, n = _body(mode, batch, worker, i)
                t0 = time.perf_counter()
                r = await client.post(path, content=body)
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 201:
                    raise RuntimeError(f"{path}: HTTP {r.status_code} {r.text[:200]}")
                done += n

        await asyncio.gather(*(one_loop(w) for w in range(connections)))
    return done, latencies


class _RawConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with one request in flight at a time."""

    def __init__(self, host: str, mode: str, batch: int, worker: int, stop: float, latencies: list[float]) -> None:
        self.host, self.mode, self.batch, self.worker, self.stop = host, mode, batch, worker, stop
        self.latencies = latencies
        self.buffer = bytearray()
        self.sent = self.tasks = self.i = 0
        self.transport: asyncio.Transport | None = None
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        if self.i and time.perf_counter() >= self.stop:  # at least one request, however slow the start
            self.transport.close()
            return
        self.i += 1
        path, body, self.sent = _body(self.mode, self.batch, self.worker, self.i)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.started = time.perf_counter()
        self.transport.write(head.encode() + body)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower() + b"\r\n"
            at = head.find(b"\r\ncontent-length:") + 17  # the server always sends one
            length = int(head[at : head.find(b"\r\n", at)])
            if len(self.buffer) < end + 4 + length:
                return
            status = int(head[9:12])
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            self.latencies.append(time.perf_counter() - self.started)
            if status != 201:
                self._fail(RuntimeError(f"HTTP {status} {body[:200]!r}"))
                return
            self.tasks += self.sent
            self._send()

    def _fail(self, exc: Exception) -> None:
        if not self.finished.done():
            self.finished.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            if exc is None:
                self.finished.set_result(None)
            else:
                self.finished.set_exception(exc)


async def _drive_raw(base: str, mode: str, batch: int, connections: int, seconds: float) -> tuple[int, list[float]]:
    host, _, port = base.removeprefix("http://").partition(":")
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    conns = []
    for w in range(connections):
        _, conn = await loop.create_connection(
            lambda w=w: _RawConnection(f"{host}:{port}", mode, batch, w, stop, latencies),  # type: ignore[misc]
            host,
            int(port),
        )
        conns.append(conn)
    await asyncio.gather(*(c.finished for c in conns))
    return sum(c.tasks for c in conns), latencies


def _generator(client: str, args: tuple[str, str, int, int, float], queue: Any) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    drive = _drive_raw if client == "raw" else _drive_httpx
    try:
        queue.put(asyncio.run(drive(*args)))
    except Exception as exc:  # reported by the parent, which would otherwise wait forever
        queue.put(f"{type(exc).__name__}: {exc}")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _runq_seconds(pid: int) -> float:
    """Time the process's threads waited for a CPU while ready to run."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):  # a thread that just ended
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def run_once(
    base: str, mode: str, batch: int, connections: int, procs: int, seconds: float, client: str, server: int
) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    per = max(1, connections // procs)
    workers = [
        ctx.Process(target=_generator, args=(client, (base, mode, batch, per, seconds), queue)) for _ in range(procs)
    ]
    # The server idles while the generators start and after they stop (a few ms of CPU
    # a second), so its CPU over the whole span is the cost of the requests.
    cpu0, runq0, t0 = _cpu_seconds(server), _runq_seconds(server), time.perf_counter()
    for w in workers:
        w.start()
    results = [queue.get() for _ in workers]
    cpu1, runq1, t1 = _cpu_seconds(server), _runq_seconds(server), time.perf_counter()
    for w in workers:
        w.join()
    failed = [r for r in results if isinstance(r, str)]
    if failed:
        raise SystemExit(f"load generator failed: {failed[0]}")
    tasks = sum(r[0] for r in results)
    lat = sorted(x for r in results for x in r[1])
    if not lat:
        raise SystemExit("no request completed")
    # Throughput over the measured window (the generators' own clocks), not process start-up.
    return {
        "tasks_per_s": tasks / seconds,
        "requests_per_s": len(lat) / seconds,
        "p50_ms": lat[len(lat) // 2] * 1000,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000,
        "server_cpu_us": (cpu1 - cpu0) / len(lat) * 1e6,
        "server_runq": (runq1 - runq0) / min(t1 - t0, seconds),  # waits happen under load
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["single", "batch", "both"], default="both")
    parser.add_argument("--batch", type=int, default=100, help="tasks per batch request")
    parser.add_argument("--connections", type=int, default=32, help="concurrent requests in flight")
    parser.add_argument("--procs", type=int, default=1, help="load-generator processes")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw", help="load generator (see above)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-access-log", action="store_true", help="turn the JSON access log off")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--url",
        help="engine to submit to (default: a fresh SQLite file); PostgreSQL and Redis get a schema "
        "or key prefix of their own, dropped at the end",
    )
    ns = parser.parse_args()
    modes = ["single", "batch"] if ns.mode == "both" else [ns.mode]
    report: dict[str, Any] = {
        "connections": ns.connections,
        "procs": ns.procs,
        "client": ns.client,
        "seconds": ns.seconds,
        "cpus": os.cpu_count(),
        "loadavg_before": os.getloadavg()[0],
    }
    scratch = Scratch(ns.url)  # a fresh SQLite file, PostgreSQL schema or Redis key prefix
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = start_api(scratch.place("api").url, port, Path(tmp) / "api.log", not ns.no_access_log)
        try:
            base = f"http://127.0.0.1:{port}"
            run_once(base, "single", ns.batch, ns.connections, ns.procs, 1.0, ns.client, proc.pid)  # warm-up
            for mode in modes:
                runs = [
                    run_once(base, mode, ns.batch, ns.connections, ns.procs, ns.seconds, ns.client, proc.pid)
                    for _ in range(ns.runs)
                ]
                median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                report[mode] = {"runs": runs, "median": median}
                if not ns.json:
                    for i, r in enumerate(runs, 1):
                        print(_line(f"{mode:6} run {i}:", r))
                    print(_line(f"{mode:6} median:", median))
        finally:
            proc.terminate()
            proc.wait(timeout=15)
            scratch.cleanup()
    report["loadavg_after"] = os.getloadavg()[0]
    if ns.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{ns.client} client, {ns.connections} connections in {ns.procs} process(es), {os.cpu_count()} CPUs, "
            f"load average {report['loadavg_before']:.2f} before, {report['loadavg_after']:.2f} after"
        )
    return 0


def _line(label: str, r: dict[str, float]) -> str:
    return (
        f"{label:15} {r['tasks_per_s']:8.0f} tasks/s {r['requests_per_s']:7.0f} req/s  "
        f"p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  "
        f"server {r['server_cpu_us']:5.0f} us CPU/req  runq {r['server_runq']:.2f}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
