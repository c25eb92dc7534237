"""The Redis peer: Dramatiq's ``RedisBroker`` under Conveyor's bench workload.

Runs in a throwaway virtualenv that has Dramatiq (with redis-py and hiredis, as
Conveyor uses) and not Conveyor (see ``run_dramatiq.sh``); it imports only Dramatiq,
redis-py and the standard library. Same machine, same Redis, same workload as
``conveyor bench --url redis://...``:

* ``submit_one``: ``actor.send()`` per second, one at a time, from one process;
* ``throughput``: no-op messages per second with ``dramatiq -p N`` worker processes
  (Dramatiq's default 8 threads each), from the first message's start to the last
  one's end, stamped by marker actors at both ends of the queue, so start-up is not
  counted;
* ``latency``: enqueue-to-start p50/p95/p99 with idle workers, one message at a time
  at a modest rate; each message records ``time.time() - sent``.

Each measurement uses its own namespace (Dramatiq's key prefix) on the given Redis
and deletes it afterwards. The same file is the worker module: ``dramatiq`` imports
it with ``DRAMATIQ_BENCH_URL`` and ``DRAMATIQ_BENCH_NS`` set.

``--conveyor-json A.json ... --dramatiq-json B.json ...`` prints Conveyor/Dramatiq
ratios from reports of ``bench/run.py --json`` and of this script.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

URL = os.environ.get("DRAMATIQ_BENCH_URL", "redis://127.0.0.1:6379/0")
NAMESPACE = os.environ.get("DRAMATIQ_BENCH_NS", "bench-dramatiq")
STAMPS = f"{NAMESPACE}:stamps"  # marker actors push their times here
broker = RedisBroker(url=URL, namespace=NAMESPACE)
dramatiq.set_broker(broker)
_client = redis.Redis.from_url(URL)


@dramatiq.actor(max_retries=0)
def noop() -> None:
    return None


@dramatiq.actor(max_retries=0)
def stamp(which: str) -> None:
    _client.hset(STAMPS, which, repr(time.time()))


@dramatiq.actor(max_retries=0)
def since(sent: float) -> None:
    _client.rpush(STAMPS + ":waits", repr(time.time() - sent))


# --- driving -------------------------------------------------------------------------


class Workers:
    """``dramatiq -p N`` on this file, in its own process group, for one namespace."""

    def __init__(self, url: str, namespace: str, processes: int) -> None:
        here = os.path.dirname(os.path.abspath(__file__))
        env = {**os.environ, "DRAMATIQ_BENCH_URL": url, "DRAMATIQ_BENCH_NS": namespace}
        env["PYTHONPATH"] = os.pathsep.join([here, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.cmd = [os.path.join(os.path.dirname(sys.executable), "dramatiq"), "dramatiq_redis", "-p", str(processes)]
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Workers:
        self.proc = subprocess.Popen(
            self.cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # Dramatiq's graceful stop
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _switch(url: str, namespace: str) -> None:
    """Point this process's broker and actors at ``namespace`` (a fresh key space)."""
    global broker, _client, STAMPS
    broker = RedisBroker(url=url, namespace=namespace)
    dramatiq.set_broker(broker)
    for actor in (noop, stamp, since):
        actor.broker = broker
        broker.declare_actor(actor)
    _client = redis.Redis.from_url(url)
    STAMPS = f"{namespace}:stamps"


def _drop(url: str, namespace: str) -> None:
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"dramatiq: timed out waiting for {what}")
        time.sleep(0.01)


def measure_submit(url: str, n: int) -> float:
    namespace = f"bench-dramatiq-{uuid.uuid4().hex[:8]}"
    _switch(url, namespace)
    try:
        noop.send()  # connect outside the clock
        started = time.perf_counter()
        for _ in range(n):
            noop.send()
        return n / (time.perf_counter() - started)
    finally:
        _drop(url, namespace)


def measure_throughput(url: str, n: int, processes: int) -> float:
    namespace = f"bench-dramatiq-{uuid.uuid4().hex[:8]}"
    _switch(url, namespace)
    try:
        stamp.send("first")
        pipe_size = 1000
        sent = 0
        while sent < n - 2:  # enqueued before the clock starts, like Conveyor's backlog
            chunk = min(pipe_size, n - 2 - sent)
            for _ in range(chunk):
                noop.send()
            sent += chunk
        stamp.send("last")
        with Workers(url, namespace, processes):
            _wait(lambda: _client.hexists(STAMPS, "last"), 60 + n / 100, "the last message")
        times = _client.hgetall(STAMPS)
        return n / (float(times[b"last"]) - float(times[b"first"]))
    finally:
        _drop(url, namespace)


def measure_latency(url: str, n: int, rate: float, processes: int) -> list[float]:
    namespace = f"bench-dramatiq-{uuid.uuid4().hex[:8]}"
    _switch(url, namespace)
    key = STAMPS + ":waits"
    try:
        with Workers(url, namespace, processes):
            since.send(time.time())  # workers are up and consuming
            _wait(lambda: _client.llen(key) >= 1, 30, "the workers to start")
            _client.delete(key)
            time.sleep(1.0)  # idle
            due = time.monotonic()
            for _ in range(n):
                since.send(time.time())
                due += random.uniform(0.5, 1.5) / rate
                time.sleep(max(0.0, due - time.monotonic()))
            _wait(lambda: _client.llen(key) >= n, 60, "every latency message")
            return [float(w) * 1000 for w in _client.lrange(key, 0, -1)]
    finally:
        _drop(url, namespace)


def run(args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, list[float]] = {}

    def add(k: str, value: float) -> None:
        figures.setdefault(k, []).append(value)

    for run_no in range(1, args.runs + 1):
        print(f"dramatiq: run {run_no}/{args.runs}", file=sys.stderr)
        add("submit_one", measure_submit(args.url, args.submit_n))
        for processes in sorted({1, args.workers}):
            add(f"throughput_{processes}", measure_throughput(args.url, args.n, processes))
        ms = measure_latency(args.url, args.latency_n, args.latency_rate, args.workers)
        for pct in (50, 95, 99):
            add(f"latency_p{pct}", percentile(ms, pct))
    return {
        "meta": {
            "peer": "dramatiq RedisBroker",
            "dramatiq": dramatiq.__version__,
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "config": vars(args),
        },
        "figures": {k: {"median": statistics.median(v), "runs": v} for k, v in figures.items()},
    }


# figure in Conveyor's JSON -> figure here, and whether higher is better
COMPARED = {
    "submit_one": ("submit_one", True),
    "submit_one_sync": ("submit_one", True),  # send() is sync
    "throughput_1": ("throughput_1", True),
    "throughput_2": ("throughput_2", True),
    "latency_p50": ("latency_p50", False),
    "latency_p99": ("latency_p99", False),
}


def _runs(paths: list[str]) -> dict[str, list[float]]:
    runs: dict[str, list[float]] = {}
    for path in paths:
        with open(path) as f:
            for k, fig in json.load(f)["figures"].items():
                runs.setdefault(k, []).extend(fig["runs"])
    return runs


def compare(conveyor_jsons: list[str], peer_jsons: list[str]) -> None:
    """Medians side by side and Conveyor's advantage (above 1: Conveyor is better)."""
    ours, theirs = _runs(conveyor_jsons), _runs(peer_jsons)
    print(f"{'figure':<14} {'conveyor':>12} {'dramatiq':>12} {'advantage':>10}   runs (conveyor | dramatiq)")
    for mine, (peer, higher_better) in COMPARED.items():
        if mine not in ours or peer not in theirs:
            continue
        a, b = statistics.median(ours[mine]), statistics.median(theirs[peer])
        ratio = a / b if higher_better else b / a
        runs = f"{[round(x, 1) for x in ours[mine]]} | {[round(x, 1) for x in theirs[peer]]}"
        print(f"{mine:<14} {a:>12,.1f} {b:>12,.1f} {ratio:>9.2f}x   {runs}")


def main() -> None:
    p = argparse.ArgumentParser(description="Dramatiq (RedisBroker) under Conveyor's bench workload")
    p.add_argument("--url", default="redis://127.0.0.1:6379/0", help="the Redis both sides use")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--n", type=int, default=20_000, help="messages per throughput run")
    p.add_argument("--submit-n", type=int, default=5_000)
    p.add_argument("--latency-n", type=int, default=300)
    p.add_argument("--latency-rate", type=float, default=50.0)
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--quick", action="store_true", help="smoke sizes")
    p.add_argument("--conveyor-json", nargs="*", default=None)
    p.add_argument("--dramatiq-json", nargs="*", default=None)
    p.add_argument("--drop-conveyor", metavar="PREFIX", help="delete a Conveyor bench prefix's keys and exit")
    args = p.parse_args()
    if args.drop_conveyor:
        _drop(args.url, "{" + args.drop_conveyor + "}:")
        return
    if args.conveyor_json is not None or args.dramatiq_json is not None:
        compare(args.conveyor_json or [], args.dramatiq_json or [])
        return
    if args.quick:
        args.n, args.submit_n, args.latency_n = 2_000, 500, 50
    json.dump(run(args), sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
