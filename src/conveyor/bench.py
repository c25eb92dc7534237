"""``conveyor bench``: submit rate, throughput, latency, claim cost and memory on one engine.

Five measurements, each repeated ``runs`` times and reported as the median of the runs:

* ``enqueue``: submits per second from one process, one ``await submit_async`` at a
  time, and in batches of 1,000 with ``enqueue_many_async``;
* ``throughput``: no-op tasks per second with 1 and 2 worker processes sharing the
  engine, counted from the first task's ``started_at`` to the last one's
  ``finished_at`` as stored (so worker start-up is not counted);
* ``latency``: enqueue-to-start (``started_at - created_at``) p50/p95/p99 with idle
  workers, the submitter sending one task at a time at a modest rate from another
  process;
* ``claim``: throughput draining tasks from the top of a 1,000,000-task backlog
  against a 10,000-task one; the ratio stays near 1 when a claim reads only the top
  of the ready index, however deep the queue;
* ``memory``: one worker's resident set size (RSS, from ``/proc``) after a warm-up
  and after 100,000 tasks; it should stay flat.

Workers are subprocesses running ``Worker`` directly (``worker_process_main``): they
open the engine, report ``ready``, and start claiming together on ``go``, so the
submitter and the workers never share a process. Every measurement gets a fresh
SQLite file (in a temporary folder, or next to the file the URL names), removed at
the end; another engine's URL is used as it is, with a fresh queue per measurement. On
Redis the session writes under a key prefix of its own (``<prefix>-bench-<hex>``) and
deletes those keys at the end (SCAN by prefix, UNLINK), never the rest of the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from conveyor import spin
from conveyor.errors import ConveyorError
from conveyor.models import Task, TaskSpec
from conveyor.task import SubmitOptions

if TYPE_CHECKING:
    from conveyor.app import Conveyor

T = TypeVar("T")

MEASUREMENTS = ("enqueue", "throughput", "latency", "claim", "memory")
LOOPS = ("asyncio", "spin", "uvloop", "auto")
NOOP = "bench.noop"  # the no-op task of conveyor.bench_tasks (imported lazily: it builds an app)
BACKLOG_PRIORITY = 2  # the backlog sits below the drained tasks (default priority 5)


class BenchError(Exception):
    """A measurement could not run (a worker died, tasks did not finish in time...)."""


# --- configuration and figures ------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of one session; ``BenchConfig.quick()`` shrinks them for a CI smoke run."""

    runs: int = 3
    workers: int = 2  # worker processes for throughput (besides 1), latency and claim cost
    concurrency: int | None = None  # per worker; None: settings (CONVEYOR_WORKER__CONCURRENCY)
    submit_n: int = 5_000  # one-by-one submits per run
    submitters: int = 16  # coroutines submitting one task per call at once (submit_concurrent)
    batch_n: int = 100_000  # batched submits per run
    batch_size: int = 1_000
    throughput_n: int = 20_000  # tasks drained per throughput run
    latency_n: int = 300  # tasks submitted one at a time per latency run
    latency_rate: float = 50.0  # their mean rate, per second (jittered ±50%)
    backlog_small: int = 10_000
    backlog_big: int = 1_000_000
    drain_n: int = 20_000  # tasks drained from the top of each backlog per run
    memory_n: int = 100_000  # tasks one worker runs while its RSS is watched
    warmup: float = 0.1  # share of memory_n done before the first RSS sample
    loop: str = "asyncio"  # event loop of the bench and its workers: asyncio, spin, uvloop or auto
    only: frozenset[str] = frozenset(MEASUREMENTS)

    @classmethod
    def quick(cls, **overrides: Any) -> BenchConfig:
        """Small sizes: a smoke run that finishes in seconds (figures are rough)."""
        small = cls(
            submit_n=200,
            batch_n=3_000,
            throughput_n=1_000,
            latency_n=30,
            latency_rate=100.0,
            backlog_small=1_000,
            backlog_big=20_000,
            drain_n=1_000,
            memory_n=3_000,
        )
        return replace(small, **overrides)


@dataclass
class Figure:
    """One reported number: its runs, their median, and the target it should meet."""

    key: str
    label: str
    unit: str
    target: float | None = None
    higher_is_better: bool = True
    runs: list[float] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.runs) if self.runs else None

    @property
    def ok(self) -> bool | None:
        """Whether the median meets the target (``None`` without a target or runs)."""
        if self.target is None or self.median is None:
            return None
        return self.median >= self.target if self.higher_is_better else self.median <= self.target

    def as_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "unit": self.unit,
            "median": self.median,
            "runs": self.runs,
            "target": self.target,
            "target_is": None if self.target is None else ("min" if self.higher_is_better else "max"),
            "ok": self.ok,
        }


#: Where an engine's targets differ from SQLite's (those in ``new_figures``): the
#: PostgreSQL and Redis issue's floors; ``None`` drops a target the engine has none for.
ENGINE_TARGETS: dict[str, dict[str, float | None]] = {
    "postgresql": {"submit_one": 3_000, "submit_map": None, "throughput_2": 5_400, "latency_p50": 3, "latency_p99": 15},
    "redis": {
        "submit_one": 7_000,
        "submit_batch": None,
        "submit_map": None,
        "throughput_2": 5_000,
        "latency_p50": 2,
        "latency_p99": 10,
    },
}
ENGINE_TARGETS["postgres"] = ENGINE_TARGETS["postgresql"]
ENGINE_TARGETS["rediss"] = ENGINE_TARGETS["redis"]


def new_figures(workers: int = 2, engine: str = "sqlite") -> dict[str, Figure]:
    """Every figure the bench reports, with the targets of a 2-core machine for ``engine``."""
    figures = [
        Figure("submit_one", "submit, one at a time", "submits/s", 5_000),
        Figure("submit_one_sync", "submit, one at a time, sync", "submits/s"),
        Figure("submit_concurrent", "submit, one per call, many callers", "submits/s"),
        Figure("submit_batch", "submit, batches of 1,000", "submits/s", 50_000),
        Figure("submit_map", "submit, bulk map of 1,000", "submits/s", 50_000),
        Figure("throughput_1", "throughput, 1 worker process", "tasks/s"),
        Figure(
            f"throughput_{workers}",
            f"throughput, {workers} worker processes",
            "tasks/s",
            3_000 if workers == 2 else None,
        ),
        Figure("latency_p50", "enqueue-to-start p50", "ms", 10, higher_is_better=False),
        Figure("latency_p95", "enqueue-to-start p95", "ms"),
        Figure("latency_p99", "enqueue-to-start p99", "ms", 30, higher_is_better=False),
        Figure("claim_small", "throughput, small backlog", "tasks/s"),
        Figure("claim_big", "throughput, big backlog", "tasks/s"),
        Figure("claim_ratio", "claim cost: big / small backlog", "ratio", 0.8),
        Figure("rss_warm", "worker RSS after warm-up", "MiB"),
        Figure("rss_end", "worker RSS at the end", "MiB"),
        Figure("rss_growth", "worker RSS growth", "%", 10, higher_is_better=False),
    ]
    found = {f.key: f for f in figures}
    for key, target in ENGINE_TARGETS.get(engine, {}).items():
        if key in found:
            found[key].target = target
    return found


@dataclass
class Report:
    figures: dict[str, Figure]
    meta: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def measured(self) -> list[Figure]:
        return [f for f in self.figures.values() if f.runs]

    def missed(self) -> list[Figure]:
        return [f for f in self.measured() if f.ok is False]

    def as_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "figures": {f.key: f.as_json() for f in self.measured()},
            "missed": [f.key for f in self.missed()],
            "notes": self.notes,
        }


# --- where tasks go ------------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """Where one measurement stores its tasks, and which queues its workers serve."""

    url: str
    queue: str = "default"
    worker_queues: tuple[str, ...] = ()

    def opts(self) -> SubmitOptions:
        return SubmitOptions(queue=self.queue)


class Scratch:
    """Hands out places: a fresh SQLite file each, or a fresh queue on another engine
    (under the session's own Redis key prefix or PostgreSQL schema); ``cleanup``
    removes what they stored."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self.dir: Path | None = None
        self.query = ""  # SQLite URL options (``?busy_timeout=...``), kept for every file
        if url is None:
            self.dir = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
        elif _scheme(url) == "sqlite":
            path, _, query = url.split("://", 1)[1].removeprefix("/").partition("?")
            given = Path(path)
            self.dir = Path(tempfile.mkdtemp(prefix=f"{given.stem}-bench-", dir=given.parent))
            self.query = f"?{query}" if query else ""
        self.store_url = url
        if url is not None and _scheme(url) in ("redis", "rediss"):
            self.store_url = _own_redis_prefix(url)
        elif url is not None and _scheme(url) in ("postgresql", "postgres"):
            self.store_url = _own_pg_schema(url)

    @property
    def engine(self) -> str:
        return "sqlite" if self.dir is not None else _scheme(self.url or "")

    def place(self, name: str) -> Place:
        if self.dir is not None:
            return Place(f"sqlite:///{(self.dir / f'{name}.db').resolve()}{self.query}")
        assert self.store_url is not None
        queue = f"bench-{name}-{uuid.uuid4().hex[:8]}"
        return Place(self.store_url, queue, (queue,))

    def cleanup(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
        elif self.store_url is not None and self.store_url != self.url:
            if self.engine in ("postgresql", "postgres"):
                _drop_pg_schema(self.store_url)
            else:
                _drop_redis_keys(self.store_url)


def _scheme(url: str) -> str:
    return url.split(":", 1)[0].lower()


def _own_redis_prefix(url: str) -> str:
    """``url`` with a key prefix of the session's own (``<prefix>-bench-<hex>``), so the
    cleanup deletes exactly the keys this session wrote."""
    from conveyor.backends.redis_rows import DEFAULT_PREFIX

    return _own_store(url, "prefix", DEFAULT_PREFIX, "-")


def _own_pg_schema(url: str) -> str:
    """``url`` with a schema of the session's own (``<schema>_bench_<hex>``), so the
    cleanup drops exactly what this session wrote, and the backlogs and 100,000-task
    batches never land in the schema the URL names."""
    from conveyor.backends.postgres import DEFAULT_SCHEMA

    return _own_store(url, "schema", DEFAULT_SCHEMA, "_")


def _own_store(url: str, option: str, default: str, sep: str) -> str:
    """``url`` with its ``option`` (a key prefix, a schema) made ``<given>{sep}bench{sep}<hex>``."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query[option] = f"{(query.get(option) or default)[:30]}{sep}bench{sep}{uuid.uuid4().hex[:8]}"
    return urlunsplit(parts._replace(query=urlencode(query)))


def _drop_pg_schema(url: str) -> None:
    import psycopg
    from psycopg import sql

    from conveyor.backends.postgres import PgUrl

    pg = PgUrl(url)
    with psycopg.connect(pg.conninfo, **pg.connect_kwargs()) as conn:  # autocommit
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(pg.schema)))


def _drop_redis_keys(url: str) -> None:
    """Delete every key of the store at ``url`` (its ``{prefix}`` hash tag): SCAN by that
    prefix and UNLINK in batches; other keys of the database are left alone."""
    import redis

    from conveyor.backends.redis_rows import parse_url

    where = parse_url(url)
    client = redis.Redis.from_url(where.server)
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{where.tag}:*", count=5_000):
            batch.append(key)
            if len(batch) >= 5_000:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
    except redis.RedisError as exc:  # say so, without hiding the error that ended the session
        print(f"bench: could not delete the keys {where.tag}:* ({exc})", file=sys.stderr)
    finally:
        client.close()


def _make_app(url: str) -> Conveyor:
    from conveyor.bench_tasks import make_app

    return make_app(url)


# --- worker processes ----------------------------------------------------------------------


def worker_process_main(argv: Sequence[str] | None = None) -> None:
    """A worker subprocess: ``URL QUEUES CONCURRENCY LOOP`` (queues comma-separated,
    concurrency 0 for the configured one). Opens the engine, prints ``ready``, waits
    for ``go`` on stdin, then runs a ``Worker`` until SIGTERM."""
    url, queues, concurrency, loop = argv if argv is not None else sys.argv[1:5]
    names = tuple(q for q in queues.split(",") if q)
    run(_worker_process(url, names, int(concurrency) or None), loop)


async def _worker_process(url: str, queues: tuple[str, ...], concurrency: int | None) -> None:
    from conveyor.worker import Worker, WorkerOptions

    metrics = None
    if os.environ.get("CONVEYOR_BENCH_OBSERVE") == "1":  # bench/observability.py: everything on
        from conveyor.logs import setup_logging
        from conveyor.metrics import WorkerMetrics

        setup_logging("json", "INFO")
        metrics = WorkerMetrics()
        metrics.serve(0, "127.0.0.1")
    app = _make_app(url)
    try:
        await app.backend()
        notify = os.environ.get("CONVEYOR_BENCH_NOTIFY", "1") == "1"  # 0: events recorded, delivered later
        options = WorkerOptions(
            queues=queues, concurrency=concurrency, install_signals=True, metrics=metrics, notify=notify
        )
        worker = Worker(app, options)
        print("ready", flush=True)
        if (await asyncio.to_thread(sys.stdin.readline)).strip() == "go":
            await worker.run()
    finally:
        await app.aclose()


class Workers:
    """Worker subprocesses on one place: started, ready, then let go together."""

    def __init__(self, procs: list[asyncio.subprocess.Process]) -> None:
        self.procs = procs

    def go(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")

    def rss_mib(self, index: int = 0) -> float:
        """Resident set size of one worker, from ``/proc/<pid>/status`` (Linux)."""
        status = Path(f"/proc/{self.procs[index].pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise BenchError("VmRSS missing from /proc status")

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.returncode is not None:
                raise BenchError(f"worker process {proc.pid} exited with code {proc.returncode}")


@contextlib.asynccontextmanager
async def start_workers(place: Place, count: int, cfg: BenchConfig) -> AsyncIterator[Workers]:
    """Start ``count`` worker processes and wait until each has its engine open;
    stop them (SIGTERM, graceful) on the way out."""
    code = "from conveyor.bench import worker_process_main; worker_process_main()"
    args = [place.url, ",".join(place.worker_queues), str(cfg.concurrency or 0), cfg.loop]
    procs: list[asyncio.subprocess.Process] = []
    try:
        for _ in range(count):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", code, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
            )
            procs.append(proc)
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            if line.strip() != b"ready":
                raise BenchError(f"worker process {proc.pid} did not start (said {line!r})")
        yield Workers(procs)
    finally:
        for proc in procs:  # signalled at once, even if this task is being cancelled
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        await asyncio.shield(_reap(procs))


async def _reap(procs: list[asyncio.subprocess.Process]) -> None:
    """Wait for signalled workers to finish their graceful shutdown; kill stragglers."""
    for proc in procs:
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


# --- helpers -------------------------------------------------------------------------------


async def enqueue(
    app: Conveyor, count: int, place: Place, *, batch: int = 1_000, priority: int | None = None
) -> list[str]:
    """Submit ``count`` no-op tasks in batches; their ids in submit order."""
    ids: list[str] = []
    for start in range(0, count, batch):
        size = min(batch, count - start)
        specs = [TaskSpec(name=NOOP, queue=place.queue, priority=priority) for _ in range(size)]
        ids.extend(h.id for h in await app.enqueue_many_async(specs))
    return ids


async def wait_finished(app: Conveyor, task_id: str, timeout: float, workers: Workers | None = None) -> Task:
    """Poll one task until it is terminal (a worker that died fails the wait early)."""
    deadline = time.monotonic() + timeout
    while True:
        task = await app.get_async(task_id)
        if task.terminal:
            return task
        if workers is not None:
            workers.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"task {task_id} still {task.state} after {timeout:.0f} s")
        await asyncio.sleep(0.02)


def _patience(count: int) -> float:
    """Seconds to wait for ``count`` tasks: generous, so only a stall fails."""
    return 60 + count / 100


async def drain_rate(app: Conveyor, ids: Sequence[str], workers: Workers, window: int) -> float:
    """Tasks per second from the first ``started_at`` to the last ``finished_at``.

    Claims go in submit order, so the first task claimed is among the first
    ``window`` ids and the last one to finish among the last ``window``; the window
    spans several claim batches of every worker."""
    await wait_finished(app, ids[-1], _patience(len(ids)), workers)
    tail = [await wait_finished(app, i, 30, workers) for i in ids[-window:]]
    head = [await app.get_async(i) for i in ids[:window]]
    starts = [t.started_at.timestamp() for t in head if t.started_at is not None]
    ends = [t.finished_at.timestamp() for t in tail if t.finished_at is not None]
    if not starts or not ends or max(ends) <= min(starts):
        raise BenchError("tasks carry no usable started_at/finished_at")
    return len(ids) / (max(ends) - min(starts))


async def check_succeeded(app: Conveyor, place: Place, expected: int) -> None:
    for info in await app.queues_async():
        if info.name == place.queue:
            done = info.counts.get("succeeded", 0)
            if done != expected:
                raise BenchError(f"{done} of {expected} tasks succeeded in queue {place.queue}")
            return
    raise BenchError(f"queue {place.queue} not found")


def _window(app: Conveyor, cfg: BenchConfig, workers: int) -> int:
    from conveyor.worker.runner import most_held

    held = most_held(cfg.concurrency or app.settings.worker.concurrency, app.settings.worker.prefetch)
    return max(256, 4 * workers * held)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0-100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]


# --- the measurements (one run each) -------------------------------------------------------


async def measure_enqueue(cfg: BenchConfig, place: Place) -> tuple[float, float, float, float, float]:
    """Submits per second: one at a time (``submit_async``, then sync ``submit`` from a
    thread), one per call from ``cfg.submitters`` callers at once, in batches of specs,
    and bulk (``submit_many``)."""
    app = _make_app(place.url)
    try:
        opts = place.opts()
        await app.submit_async(NOOP, {}, opts)  # open the engine outside the clock
        started = time.perf_counter()
        for _ in range(cfg.submit_n):
            await app.submit_async(NOOP, {}, opts)
        one = cfg.submit_n / (time.perf_counter() - started)
        one_sync = await asyncio.to_thread(_submit_sync, place, cfg.submit_n)
        concurrent = await _submit_concurrently(app, cfg.submit_n, opts, cfg.submitters)
        started = time.perf_counter()
        await enqueue(app, cfg.batch_n, place, batch=cfg.batch_size)
        batched = cfg.batch_n / (time.perf_counter() - started)
        started = time.perf_counter()
        for done in range(0, cfg.batch_n, cfg.batch_size):
            await app.submit_many_async(NOOP, [{}] * min(cfg.batch_size, cfg.batch_n - done), opts)
        mapped = cfg.batch_n / (time.perf_counter() - started)
        return one, one_sync, concurrent, batched, mapped
    finally:
        await app.aclose()


def _submit_sync(place: Place, n: int) -> float:
    """Sync ``submit`` one at a time, as a web app's request handler calls it."""
    app = _make_app(place.url)
    try:
        opts = place.opts()
        app.submit(NOOP, {}, opts)  # open the engine outside the clock
        started = time.perf_counter()
        for _ in range(n):
            app.submit(NOOP, {}, opts)
        return n / (time.perf_counter() - started)
    finally:
        app.close()


async def _submit_concurrently(app: Conveyor, n: int, opts: SubmitOptions, submitters: int) -> float:
    """Submits/s when ``submitters`` coroutines each submit one task per call, as the
    request handlers of a web app do: the engine may overlap their round trips (one
    pipelined Redis connection, several pooled PostgreSQL ones), but no call batches."""
    share, rest = divmod(n, submitters)

    async def one_by_one(count: int) -> None:
        for _ in range(count):
            await app.submit_async(NOOP, {}, opts)

    started = time.perf_counter()
    await asyncio.gather(*(one_by_one(share + (i < rest)) for i in range(submitters)))
    return n / (time.perf_counter() - started)


async def measure_throughput(cfg: BenchConfig, place: Place, workers: int) -> float:
    """No-op tasks per second with ``workers`` processes draining a pre-filled queue."""
    app = _make_app(place.url)
    try:
        ids = await enqueue(app, cfg.throughput_n, place, batch=cfg.batch_size)
        async with start_workers(place, workers, cfg) as procs:
            procs.go()
            rate = await drain_rate(app, ids, procs, _window(app, cfg, workers))
        await check_succeeded(app, place, len(ids))
        return rate
    finally:
        await app.aclose()


async def measure_latency(cfg: BenchConfig, place: Place) -> list[float]:
    """Enqueue-to-start of each task, in milliseconds, with idle workers."""
    app = _make_app(place.url)
    try:
        await app.backend()
        async with start_workers(place, cfg.workers, cfg) as procs:
            procs.go()
            await asyncio.sleep(0.5)  # the workers find nothing and start waiting
            ids, opts = [], place.opts()
            due = time.monotonic()
            for _ in range(cfg.latency_n):
                ids.append((await app.submit_async(NOOP, {}, opts)).id)
                due += random.uniform(0.5, 1.5) / cfg.latency_rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            tasks = [await wait_finished(app, i, 30, procs) for i in ids]
    finally:
        await app.aclose()
    return [(t.started_at - t.created_at).total_seconds() * 1000 for t in tasks if t.started_at is not None]


async def fill_backlog(cfg: BenchConfig, place: Place, size: int) -> None:
    """``size`` no-op tasks below the drained ones' priority, left queued throughout."""
    app = _make_app(place.url)
    try:
        await enqueue(app, size, place, batch=max(cfg.batch_size, 10_000), priority=BACKLOG_PRIORITY)
    finally:
        await app.aclose()


async def measure_drain(cfg: BenchConfig, place: Place) -> float:
    """Tasks per second draining ``drain_n`` tasks from the top of the queued backlog."""
    app = _make_app(place.url)
    try:
        ids = await enqueue(app, cfg.drain_n, place, batch=cfg.batch_size)
        async with start_workers(place, cfg.workers, cfg) as procs:
            procs.go()
            return await drain_rate(app, ids, procs, _window(app, cfg, cfg.workers))
    finally:
        await app.aclose()


async def measure_memory(cfg: BenchConfig, place: Place) -> tuple[float, float]:
    """One worker's RSS (MiB) after ``warmup`` of ``memory_n`` tasks, and at the end."""
    app = _make_app(place.url)
    try:
        ids = await enqueue(app, cfg.memory_n, place, batch=cfg.batch_size)
        async with start_workers(place, 1, cfg) as procs:
            procs.go()
            warm_id = ids[min(len(ids) - 1, int(len(ids) * cfg.warmup))]
            await wait_finished(app, warm_id, _patience(len(ids)), procs)
            warm = procs.rss_mib()
            await wait_finished(app, ids[-1], _patience(len(ids)), procs)
            end = procs.rss_mib()
        return warm, end
    finally:
        await app.aclose()


# --- the session -----------------------------------------------------------------------------


async def run_session(url: str | None, cfg: BenchConfig, say: Callable[[str], None]) -> Report:
    """Run the chosen measurements ``cfg.runs`` times each; figures hold every run."""
    scratch = Scratch(url)
    report = Report(new_figures(cfg.workers, scratch.engine), _meta(scratch, cfg))
    only = set(cfg.only)
    if scratch.engine == "memory" and only - {"enqueue"}:
        report.notes.append("memory:// lives in one process: only 'enqueue' can run on it")
        only &= {"enqueue"}
    if "memory" in only and not sys.platform.startswith("linux"):
        report.notes.append("no /proc here: the memory measurement needs Linux")
        only.discard("memory")
    try:
        for name in MEASUREMENTS:
            if name == "claim" and name in only:
                await _claim_session(cfg, scratch, report.figures, say)
            elif name in only:
                for run_no in range(1, cfg.runs + 1):
                    say(f"{name}: run {run_no}/{cfg.runs}")
                    await _one_run(name, cfg, scratch, run_no, report.figures)
    finally:
        scratch.cleanup()
    return report


async def _one_run(name: str, cfg: BenchConfig, scratch: Scratch, run_no: int, fig: dict[str, Figure]) -> None:
    place = scratch.place(f"{name}-{run_no}")
    if name == "enqueue":
        one, one_sync, concurrent, batched, mapped = await measure_enqueue(cfg, place)
        fig["submit_one"].runs.append(one)
        fig["submit_one_sync"].runs.append(one_sync)
        fig["submit_concurrent"].runs.append(concurrent)
        fig["submit_batch"].runs.append(batched)
        fig["submit_map"].runs.append(mapped)
    elif name == "throughput":
        for count in sorted({1, cfg.workers}):
            place = scratch.place(f"{name}-{count}w-{run_no}")
            fig[f"throughput_{count}"].runs.append(await measure_throughput(cfg, place, count))
    elif name == "latency":
        ms = await measure_latency(cfg, place)
        for pct in (50, 95, 99):
            fig[f"latency_p{pct}"].runs.append(percentile(ms, pct))
    elif name == "memory":
        warm, end = await measure_memory(cfg, place)
        fig["rss_warm"].runs.append(warm)
        fig["rss_end"].runs.append(end)
        fig["rss_growth"].runs.append((end - warm) / warm * 100)


async def _claim_session(
    cfg: BenchConfig, scratch: Scratch, fig: dict[str, Figure], say: Callable[[str], None]
) -> None:
    """Both backlogs are filled once; each run drains fresh tasks from their top."""
    small, big = scratch.place("backlog-small"), scratch.place("backlog-big")
    say(f"claim: queuing a backlog of {cfg.backlog_small:,}")
    await fill_backlog(cfg, small, cfg.backlog_small)
    say(f"claim: queuing a backlog of {cfg.backlog_big:,} (takes a while)")
    await fill_backlog(cfg, big, cfg.backlog_big)
    for run_no in range(1, cfg.runs + 1):
        say(f"claim: run {run_no}/{cfg.runs}")
        rate_small = await measure_drain(cfg, small)
        rate_big = await measure_drain(cfg, big)
        fig["claim_small"].runs.append(rate_small)
        fig["claim_big"].runs.append(rate_big)
        fig["claim_ratio"].runs.append(rate_big / rate_small)


def _meta(scratch: Scratch, cfg: BenchConfig) -> dict[str, Any]:
    from conveyor import __version__

    sizes = asdict(cfg)
    sizes["only"] = sorted(cfg.only)
    return {
        "conveyor": __version__,
        "engine": scratch.engine,
        "url": scratch.url or "a fresh temporary SQLite file per measurement",
        "python": platform.python_version(),
        "event_loop": loop_name(cfg.loop),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": sizes,
    }


# --- running and printing --------------------------------------------------------------------


def loop_name(loop: str) -> str:
    """``asyncio``, ``spin`` (asyncio polling before it sleeps, ``conveyor.spin``) or
    ``uvloop``: ``auto`` is uvloop when installed (the ``fast`` extra)."""
    if loop not in LOOPS:
        raise BenchError(f"unknown event loop {loop!r}: expected one of {', '.join(LOOPS)}")
    if loop != "auto":
        return loop
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(coro: Coroutine[Any, Any, T], loop: str = "asyncio") -> T:
    """Run ``coro`` on the event loop named by ``loop`` (see ``loop_name``)."""
    name = loop_name(loop)
    if name == "asyncio":
        return asyncio.run(coro)
    if name == "spin":
        with asyncio.Runner(loop_factory=spin.new_event_loop) as runner:
            return runner.run(coro)
    import uvloop

    return uvloop.run(coro)


def run_bench(
    url: str | None = None, cfg: BenchConfig | None = None, say: Callable[[str], None] | None = None
) -> Report:
    """Run a session synchronously (the library entry point)."""
    cfg = cfg or BenchConfig()
    return run(run_session(url, cfg, say or (lambda _msg: None)), cfg.loop)


def run_cli(
    url: str | None = None,
    *,
    json_out: bool = False,
    runs: int = 3,
    n: int | None = None,
    quick: bool = False,
    only: Sequence[str] = (),
    workers: int = 2,
    concurrency: int | None = None,
    check: bool = False,
    loop: str = "asyncio",
) -> int:
    """``conveyor bench``: run, then print a table (or JSON with ``json_out``).

    ``n`` sets the tasks per throughput and claim-cost run; ``quick`` uses smoke-test
    sizes; ``only`` picks measurements among ``MEASUREMENTS``; ``check`` makes a
    missed target exit 1; ``loop`` is the event loop of the submitter and the workers
    (``asyncio``, as ``conveyor worker`` uses, ``spin``, ``uvloop``, or ``auto``). Exit codes:
    0 ran, 1 failed (or missed with ``check``), 2 bad input.
    """
    from rich.console import Console

    err = Console(stderr=True)
    unknown = set(only) - set(MEASUREMENTS)
    if unknown or runs < 1 or (n is not None and n < 1) or workers < 1 or loop not in LOOPS:
        what = f"unknown measurement(s) {', '.join(sorted(unknown))}" if unknown else "runs, n and workers must be >= 1"
        if loop not in LOOPS:
            what = f"unknown event loop {loop!r} (expected {', '.join(LOOPS)})"
        err.print(f"[red]bench: {what}[/] (measurements: {', '.join(MEASUREMENTS)})")
        return 2
    sizes: dict[str, Any] = {"runs": runs, "workers": workers, "concurrency": concurrency, "loop": loop}
    if n is not None:
        sizes.update(throughput_n=n, drain_n=n)
    if only:
        sizes["only"] = frozenset(only)
    cfg = BenchConfig.quick(**sizes) if quick else replace(BenchConfig(), **sizes)
    try:
        report = run_bench(url, cfg, lambda msg: err.print(f"[dim]{msg}[/]"))
    except (BenchError, ConveyorError, OSError) as exc:
        err.print(f"[red]bench failed: {exc}[/]")
        return 1
    if json_out:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print_report(report, Console())
    return 1 if check and report.missed() else 0


def print_report(report: Report, console: Any) -> None:
    """The figures as a rich table: median, every run, target and whether it is met."""
    from rich.table import Table

    meta = report.meta
    table = Table(
        title=f"Conveyor {meta['conveyor']} bench on {meta['engine']} ({meta['cpus']} CPUs, {meta['event_loop']})"
    )
    for col in ("measurement", "median", "runs", "target"):
        table.add_column(col, justify="left" if col == "measurement" else "right")
    table.add_column("", justify="center")
    for fig in report.measured():
        target = "" if fig.target is None else ("≥ " if fig.higher_is_better else "≤ ") + fmt(fig.target, fig.unit)
        mark = {True: "[green]ok[/]", False: "[red]missed[/]", None: ""}[fig.ok]
        runs = " ".join(fmt(r, fig.unit, bare=True) for r in fig.runs)
        table.add_row(fig.label, fmt(fig.median, fig.unit), runs, target, mark)
    console.print(table)
    for note in report.notes:
        console.print(f"note: {note}")


def fmt(value: float | None, unit: str, *, bare: bool = False) -> str:
    if value is None:
        return "-"
    if unit.endswith("/s"):
        text, suffix = f"{value:,.0f}", f" {unit}"
    elif unit == "ms":
        text, suffix = f"{value:.1f}", " ms"
    elif unit == "%":
        text, suffix = f"{value:+.1f}", " %"
    elif unit == "MiB":
        text, suffix = f"{value:.1f}", " MiB"
    else:
        text, suffix = f"{value:.2f}", ""
    return text if bare else text + suffix
