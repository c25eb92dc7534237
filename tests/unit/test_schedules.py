"""Schedules: declaration checks, tick math, missed-tick policies, exactly-once firing."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conveyor import Conveyor, InvalidInput
from conveyor.backends.base import TaskFilter
from conveyor.config import Settings, load_settings
from conveyor.errors import ConfigError
from conveyor.models import Task
from conveyor.schedules import make_schedule, tick_key
from conveyor.worker.scheduler import Scheduler

T0 = 1_700_000_000.0  # a multiple of 10: an interval tick


@pytest.fixture(params=["memory", "sqlite"])
async def app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Conveyor]:
    url = f"memory://cron-{uuid.uuid4().hex}" if request.param == "memory" else f"sqlite:///{tmp_path}/cron.db"
    app = Conveyor(url)

    @app.task(name="job")
    def job(n: int = 0) -> int:
        return n

    yield app
    await app.aclose()


async def _tasks(app: Conveyor) -> list[Task]:
    return (await app.list_tasks_async(TaskFilter(name="job"), limit=1000)).items


@pytest.mark.parametrize("expr", ["61 * * * *", "* * * *", "*/5 * * * * *", "", "every minute", "* * 32 * *"])
def test_bad_cron_expression_is_refused_at_declaration(expr: str) -> None:
    app = Conveyor("memory://bad-cron")
    with pytest.raises(InvalidInput, match="cron"):

        @app.periodic(expr)
        def nope() -> None: ...

    assert app.schedules == {} and app.tasks == {}


def test_schedule_needs_exactly_one_timing() -> None:
    with pytest.raises(InvalidInput, match="exactly one of cron or every"):
        make_schedule("x", task="job", cron="* * * * *", every=5)
    with pytest.raises(InvalidInput, match="exactly one of cron or every"):
        make_schedule("x", task="job")
    with pytest.raises(InvalidInput, match="whole number of seconds"):
        make_schedule("x", task="job", every=1.5)


def test_periodic_registers_the_task_and_a_named_schedule() -> None:
    app = Conveyor("memory://periodic")

    @app.periodic("@hourly", name="hourly-report", args={"n": 3}, queue="reports", priority="high", task_name="r")
    def report(n: int) -> int:
        return n

    schedule = app.schedules["hourly-report"]
    assert (schedule.task, schedule.cron, schedule.queue, schedule.args) == (
        report.name,
        "@hourly",
        "reports",
        {"n": 3},
    )
    assert app.tasks[report.name].queue == "reports"
    with pytest.raises(InvalidInput, match="already declared"):
        app.periodic(every=10, name="hourly-report")(report)
    with pytest.raises(InvalidInput, match="invalid args"):
        app.periodic(every=10, name="bad-args", args={"m": 1})(report)


def test_config_schedules_are_validated_and_loaded() -> None:
    settings = Settings(
        url="memory://cfg", schedules={"nightly": {"cron": "0 3 * * *", "task": "job", "catch_up": "all"}}
    )
    app = Conveyor(settings=settings)
    assert app.schedules["nightly"].cron == "0 3 * * *"
    with pytest.raises(ConfigError, match="invalid cron expression"):
        load_settings(url="memory://cfg", schedules={"bad": {"cron": "nope", "task": "job"}})
    with pytest.raises(ConfigError, match="Extra inputs"):
        load_settings(url="memory://cfg", schedules={"bad": {"every": 5, "task": "job", "colour": "red"}})


@pytest.mark.parametrize("expr", ["0 0 31 2 *", "0 0 30 2 *", "0 12 31 4,6 *"])
def test_a_cron_expression_matching_no_date_is_refused_at_declaration(expr: str) -> None:
    """It parses, but computing any tick fails: ``cron list`` and the scheduler broke."""
    with pytest.raises(InvalidInput, match="matches no date"):
        make_schedule("never", task="job", cron=expr)
    with pytest.raises(ConfigError, match=r"schedules\.never\.cron: .*matches no date"):
        load_settings(url="memory://cfg", schedules={"never": {"cron": expr, "task": "job"}})
    assert make_schedule("leap", task="job", cron="0 0 29 2 *").next_ticks(T0, 1)  # rare, but real


def test_a_schedule_priority_out_of_range_is_refused_at_declaration() -> None:
    """Else every tick's submit fails validation, logged by the worker on each pass."""
    app = Conveyor("memory://bad-priority")

    @app.task(name="job")
    def job() -> None: ...

    for bad in (99, -1, "urgent", True):
        with pytest.raises(InvalidInput, match="invalid priority"):
            app.periodic(every=10, name="bad", priority=bad)(job)
    with pytest.raises(ConfigError, match=r"schedules\.bad\.priority: .*invalid priority 99"):
        load_settings(url="memory://cfg", schedules={"bad": {"every": 10, "task": "job", "priority": 99}})
    assert app.schedules == {}
    assert make_schedule("ok", task="job", every=10, priority="low").priority == "low"  # kept as given
    assert make_schedule("ok", task="job", every=10, priority=10).spec(T0).priority == 10


def test_config_schedule_args_are_checked_when_its_task_is_registered() -> None:
    schedules = {"bad": {"every": 10, "task": "add", "args": {"zzz": 1}}, "good": {"every": 10, "task": "ok"}}
    app = Conveyor(settings=Settings(url="memory://cfg-args", schedules=schedules))
    with pytest.raises(InvalidInput, match="schedule 'bad': invalid args for task add"):

        @app.task(name="add")
        def add(x: int, y: int) -> int:
            return x + y

    assert "add" not in app.tasks

    @app.task(name="ok")
    def ok() -> None: ...

    assert "ok" in app.tasks


def test_interval_ticks_are_aligned_to_the_epoch_and_cron_ticks_to_the_expression() -> None:
    every = make_schedule("e", task="job", every=10)
    assert every.ticks(T0 - 25, T0 + 3, 10) == [T0 - 20, T0 - 10, T0]
    assert every.next_ticks(T0 + 3, 2) == [T0 + 10, T0 + 20]
    cron = make_schedule("c", task="job", cron="*/5 * * * *")
    t = 1_700_000_100.0  # 22:15:00 UTC, a 5-minute tick
    assert cron.ticks(t - 600, t, 10) == [t - 300, t]
    assert cron.ticks(t - 600, t - 1, 10) == [t - 300]
    assert cron.next_ticks(t, 2) == [t + 300, t + 600]


async def test_several_schedulers_fire_each_tick_exactly_once(app: Conveyor) -> None:
    schedule = make_schedule("every10", task="job", every=10, args={"n": 1})
    schedulers = [Scheduler(app, [schedule]) for _ in range(4)]
    for step in range(6):
        now = T0 + 5 * step + 0.5
        await asyncio.gather(*(s.fire(now) for s in schedulers))
    tasks = await _tasks(app)
    keys = Counter(t.idempotency_key for t in tasks)
    assert sorted(keys) == [tick_key("every10", T0 + 10 * i) for i in range(3)]
    assert set(keys.values()) == {1}
    assert sum(s.fired for s in schedulers) == 3
    assert all(t.run_at.timestamp() == int(t.idempotency_key.rsplit(":", 1)[1]) for t in tasks)


async def _restart_after_downtime(app: Conveyor, catch_up: str) -> list[str]:
    """A scheduler fires at T0, everything is down for 100 s, a new one starts."""
    schedule = make_schedule("s", task="job", every=10, catch_up=catch_up, max_catch_up=4)
    await Scheduler(app, [schedule]).fire(T0 + 0.2)
    await Scheduler(app, [schedule]).fire(T0 + 104)
    return sorted(t.idempotency_key or "" for t in await _tasks(app))


async def test_missed_ticks_latest_fires_only_the_most_recent_one(app: Conveyor) -> None:
    assert await _restart_after_downtime(app, "latest") == [tick_key("s", T0), tick_key("s", T0 + 100)]


async def test_missed_ticks_none_fires_nothing_missed(app: Conveyor) -> None:
    assert await _restart_after_downtime(app, "none") == [tick_key("s", T0)]


async def test_missed_ticks_all_fires_a_bounded_backlog(app: Conveyor) -> None:
    # each scheduler's first pass catches up on the 4 most recent ticks
    expected = [tick_key("s", T0 + 10 * i) for i in (-3, -2, -1, 0, 7, 8, 9, 10)]
    assert await _restart_after_downtime(app, "all") == sorted(expected)


async def test_a_stalled_scheduler_fires_the_newest_missed_tick_once(app: Conveyor) -> None:
    schedule = make_schedule("s", task="job", every=10)
    scheduler = Scheduler(app, [schedule])
    await scheduler.fire(T0 + 1)
    await scheduler.fire(T0 + 55)  # slept through T0+10 ... T0+50
    assert sorted(t.idempotency_key or "" for t in await _tasks(app)) == [tick_key("s", T0), tick_key("s", T0 + 50)]


async def test_a_schedule_with_bad_args_does_not_block_the_others(app: Conveyor) -> None:
    good = make_schedule("good", task="job", every=10)
    bad = make_schedule("bad", task="job", every=10, args={"nope": 1})
    await Scheduler(app, [bad, good]).fire(T0 + 1)
    assert [t.idempotency_key for t in await _tasks(app)] == [tick_key("good", T0)]


async def test_scheduler_loop_fires_live_ticks_until_stopped(app: Conveyor) -> None:
    schedule = make_schedule("fast", task="job", every=1, catch_up="none")
    schedulers = [Scheduler(app, [schedule]) for _ in range(3)]
    runs = [asyncio.create_task(s.run()) for s in schedulers]
    await asyncio.sleep(2.6)
    for s in schedulers:
        s.stop()
    await asyncio.gather(*runs)
    keys = Counter(t.idempotency_key for t in await _tasks(app))
    assert 2 <= len(keys) <= 4 and set(keys.values()) == {1}
