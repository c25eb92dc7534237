"""Flow control on every engine: pause, rate and concurrency limits, breakers, aging."""

from __future__ import annotations

import time

import pytest

from conveyor.backends.base import Backend, ClaimParams
from conveyor.errors import InvalidInput, TaskNotFound
from conveyor.features.flow import BreakerState, QueueUpdate
from conveyor.states import FailureReason

from .helpers import claim, complete, enqueue, fail, new_task, retry, single_store_only, submit


async def _fill(backend: Backend, n: int, **overrides: object) -> list[str]:
    done = await enqueue(backend, *[new_task(**overrides) for _ in range(n)])  # type: ignore[arg-type]
    return [e.id for e in done]


# --- settings -------------------------------------------------------------------------


async def test_queue_update_stores_settings_and_lists_them(backend: Backend) -> None:
    stored = await backend.queue_update(QueueUpdate("emails", rate_limit="100/s", concurrency=5))
    assert (stored.rate_limit, stored.concurrency, stored.paused) == ("100/s", 5, False)
    await backend.queue_update(QueueUpdate("send", kind="task", breaker_threshold=3))
    listed = await backend.flow_list()
    assert [(c.kind, c.name) for c in listed] == [("queue", "emails"), ("task", "send")]
    assert listed[0].rate_limit == "100/s"


async def test_queue_update_changes_only_the_fields_given(backend: Backend) -> None:
    await backend.queue_update(QueueUpdate("q", rate_limit="5/m", concurrency=2))
    await backend.queue_update(QueueUpdate("q", paused=True))
    (control,) = await backend.flow_list()
    assert (control.rate_limit, control.concurrency, control.paused) == ("5/m", 2, True)


async def test_queue_update_reset_clears_a_setting_and_an_empty_control_disappears(backend: Backend) -> None:
    await backend.queue_update(QueueUpdate("q", concurrency=2))
    await backend.queue_update(QueueUpdate("q", reset=frozenset({"concurrency"})))
    assert await backend.flow_list() == []


@pytest.mark.parametrize(
    "update",
    [
        QueueUpdate("q", rate_limit="5/x"),
        QueueUpdate("q", rate_limit="0/s"),
        QueueUpdate("q", concurrency=-1),
        QueueUpdate("q", concurrency=0),
        QueueUpdate("q", kind="task", breaker_threshold=0),
        QueueUpdate("q", kind="bogus"),  # type: ignore[arg-type]
        QueueUpdate("q", reset=frozenset({"nonsense"})),
    ],
)
async def test_queue_update_refuses_bad_input_and_stores_nothing(backend: Backend, update: QueueUpdate) -> None:
    with pytest.raises(InvalidInput):
        await backend.queue_update(update)
    assert await backend.flow_list() == []


# --- pause ----------------------------------------------------------------------------


async def test_paused_queue_is_not_claimed_from_until_resumed(backend: Backend) -> None:
    await submit(backend, queue="slow")
    other = await submit(backend, queue="fast")
    await backend.queue_update(QueueUpdate("slow", paused=True))
    assert [t.id for t in await claim(backend)] == [other]
    assert await claim(backend, queues=("slow",)) == []
    infos = {q.name: q for q in await backend.queue_list()}
    assert infos["slow"].paused and not infos["fast"].paused
    await backend.queue_update(QueueUpdate("slow", paused=False))
    assert len(await claim(backend, queues=("slow",))) == 1


async def test_paused_queue_shows_in_queue_list_even_when_empty(backend: Backend) -> None:
    await backend.queue_update(QueueUpdate("idle", paused=True))
    assert [q.name for q in await backend.queue_list() if q.paused] == ["idle"]


# --- rate limits ------------------------------------------------------------------------


async def test_queue_rate_limit_spaces_claims_and_reports_when_more_are_allowed(backend: Backend) -> None:
    single_store_only(backend.url, "rate limits are enforced per shard (each shard has its own bucket)")
    await _fill(backend, 5, queue="r")
    await backend.queue_update(QueueUpdate("r", rate_limit="2/s"))
    t0 = time.time()
    first = await backend.task_claim(ClaimParams("w1", 10, 30.0, ("r",), now=t0))
    assert len(first.tasks) == 1
    assert first.next_due is not None and first.next_due == pytest.approx(t0 + 0.5, abs=0.01)
    assert await claim(backend, queues=("r",), now=t0 + 0.2) == []
    assert len(await claim(backend, queues=("r",), now=t0 + 0.5)) == 1
    assert len(await claim(backend, queues=("r",), now=t0 + 5)) == 1  # the bucket holds one token


async def test_rate_limit_never_exceeds_its_count_in_any_window(backend: Backend) -> None:
    single_store_only(backend.url, "rate limits are enforced per shard (each shard has its own bucket)")
    await _fill(backend, 60, queue="r")
    await backend.queue_update(QueueUpdate("r", rate_limit="5/m"))
    t0, starts = time.time(), []
    for step in range(0, 300, 3):  # a claim every 3 s for 5 minutes
        for _ in await claim(backend, queues=("r",), now=t0 + step):
            starts.append(step)
    assert len(starts) == 25  # one every 12 s
    assert max(sum(1 for s in starts if w <= s < w + 60) for w in range(300)) <= 5


async def test_high_rate_limit_allows_a_burst_per_claim(backend: Backend) -> None:
    await _fill(backend, 50, queue="r")
    await backend.queue_update(QueueUpdate("r", rate_limit="10000/s"))
    assert len(await claim(backend, 50, queues=("r",))) == 50


async def test_task_name_rate_limit_holds_that_name_only(backend: Backend) -> None:
    single_store_only(backend.url, "rate limits are enforced per shard (each shard has its own bucket)")
    await _fill(backend, 3, name="slow.task", priority=9)
    fast = await _fill(backend, 3, name="fast.task", priority=1)
    await backend.queue_update(QueueUpdate("slow.task", kind="task", rate_limit="1/m"))
    got = await claim(backend, 10)
    assert [t.name for t in got].count("slow.task") == 1
    assert {t.id for t in got if t.name == "fast.task"} == set(fast)


# --- concurrency limits ---------------------------------------------------------------


async def test_queue_concurrency_limit_counts_running_tasks_across_workers(backend: Backend) -> None:
    single_store_only(backend.url, "concurrency limits count the running tasks of each shard")
    await _fill(backend, 5, queue="c")
    await backend.queue_update(QueueUpdate("c", concurrency=2))
    a = await claim(backend, 10, worker_id="w1")
    assert len(a) == 2
    assert await claim(backend, 10, worker_id="w2") == []
    assert await backend.task_finish_many([complete(a[0])]) == [True]
    assert len(await claim(backend, 10, worker_id="w2")) == 1


async def test_task_concurrency_limit_does_not_block_other_names_behind_it(backend: Backend) -> None:
    single_store_only(backend.url, "concurrency limits count the running tasks of each shard")
    await _fill(backend, 4, name="heavy", priority=9)
    light = await _fill(backend, 2, name="light", priority=1)
    await backend.queue_update(QueueUpdate("heavy", kind="task", concurrency=1))
    got = await claim(backend, 10)
    assert [t.name for t in got] == ["heavy", "light", "light"]
    assert {t.id for t in got[1:]} == set(light)
    assert await claim(backend, 10) == []


async def test_released_and_retried_tasks_free_their_concurrency_slot(backend: Backend) -> None:
    single_store_only(backend.url, "concurrency limits count the running tasks of each shard")
    await _fill(backend, 3, queue="c")
    await backend.queue_update(QueueUpdate("c", concurrency=1))
    (first,) = await claim(backend, 10)
    await backend.task_finish_many([retry(first, time.time() + 3600)])
    assert len(await claim(backend, 10)) == 1


async def test_limits_still_respect_worker_tags(backend: Backend) -> None:
    gpu = await submit(backend, requires=["gpu"])
    await submit(backend)
    await backend.queue_update(QueueUpdate("default", concurrency=10))
    got = await claim(backend, 10, tags=frozenset())
    assert gpu not in {t.id for t in got} and len(got) == 1
    assert [t.id for t in await claim(backend, 10, tags=frozenset({"gpu"}))] == [gpu]


# --- circuit breakers -----------------------------------------------------------------


async def _open_breaker(backend: Backend, name: str, threshold: int = 2, cooldown: float = 10.0) -> None:
    single_store_only(backend.url, "breakers count the failures on each shard")
    await backend.queue_update(QueueUpdate(name, kind="task", breaker_threshold=threshold, breaker_cooldown=cooldown))
    for _ in range(threshold):
        (t,) = await claim(backend, 1)
        assert t.name == name
        await backend.task_finish_many([fail(t, FailureReason.PERMANENT_ERROR)])


async def test_breaker_opens_after_consecutive_failures_and_stops_dispatch(backend: Backend) -> None:
    await _fill(backend, 6, name="flaky", priority=9)
    other = await submit(backend, name="steady", priority=1)
    await _open_breaker(backend, "flaky")
    assert (await backend.stats()).open_breakers == ["flaky"]
    (control,) = await backend.flow_list()
    assert control.breaker is BreakerState.OPEN and control.opened_until is not None
    assert [t.id for t in await claim(backend, 10)] == [other]


async def test_breaker_lets_one_probe_through_after_cooldown_and_closes_on_success(backend: Backend) -> None:
    await _fill(backend, 6, name="flaky")
    await _open_breaker(backend, "flaky", cooldown=10.0)
    later = time.time() + 11
    (probe,) = await claim(backend, 10, now=later)
    assert await claim(backend, 10, now=later) == []  # half-open: only the probe
    assert (await backend.flow_list())[0].breaker is BreakerState.HALF_OPEN
    await backend.task_finish_many([complete(probe)])
    assert (await backend.stats()).open_breakers == []
    assert len(await claim(backend, 10, now=later)) == 3


async def test_failed_probe_reopens_the_breaker(backend: Backend) -> None:
    await _fill(backend, 6, name="flaky")
    await _open_breaker(backend, "flaky", cooldown=10.0)
    (probe,) = await claim(backend, 10, now=time.time() + 11)
    await backend.task_finish_many([fail(probe, FailureReason.PERMANENT_ERROR)])
    (control,) = await backend.flow_list()
    assert control.breaker is BreakerState.OPEN
    assert await claim(backend, 10, now=time.time() + 5) == []


async def test_success_resets_the_consecutive_failure_count(backend: Backend) -> None:
    single_store_only(backend.url, "breakers count the failures on each shard")
    await _fill(backend, 4, name="flaky")
    await backend.queue_update(QueueUpdate("flaky", kind="task", breaker_threshold=2))
    a, b, c = await claim(backend, 3)
    await backend.task_finish_many([fail(a, FailureReason.PERMANENT_ERROR), complete(b)])
    await backend.task_finish_many([fail(c, FailureReason.PERMANENT_ERROR)])
    (control,) = await backend.flow_list()
    assert (control.breaker, control.failures) == (BreakerState.CLOSED, 1)


# --- priority aging -------------------------------------------------------------------


async def test_aging_lifts_an_old_low_task_above_new_high_ones(backend: Backend) -> None:
    single_store_only(backend.url, "claim order holds within each shard, not across shards")
    now = time.time()
    low = await submit(backend, priority=0, run_at=now - 20, created_at=now - 20)
    await _fill(backend, 3, priority=10, run_at=now, created_at=now)
    plain = await backend.task_claim(ClaimParams("w1", 1, 30.0, now=now))
    assert plain.tasks[0].id != low
    aged = await backend.task_claim(ClaimParams("w1", 1, 30.0, now=now, aging_interval=2.0))
    assert aged.tasks[0].id == low


async def _starvation_run(backend: Backend, aging: float | None) -> int | None:
    """A stream of high tasks, two per simulated second, one claimed per second; the
    round in which the low task got claimed, or ``None`` if it starved."""
    t0 = time.time()
    low = await submit(backend, priority=0, run_at=t0, created_at=t0)
    for second in range(40):
        now = t0 + second
        await _fill(backend, 2, priority=10, run_at=now, created_at=now)
        got = await backend.task_claim(ClaimParams("w1", 1, 30.0, now=now, aging_interval=aging))
        if got.tasks[0].id == low:
            return second
    return None


async def test_without_aging_a_low_task_starves_behind_a_stream_of_high_ones(backend: Backend) -> None:
    single_store_only(backend.url, "a shard without high tasks hands out the low one: claim order is per shard")
    assert await _starvation_run(backend, None) is None


async def test_with_aging_a_low_task_is_not_starved(backend: Backend) -> None:
    claimed_at = await _starvation_run(backend, 2.0)
    assert claimed_at is not None and claimed_at <= 25


# --- explain support ------------------------------------------------------------------


async def test_task_ahead_counts_pending_tasks_before_it_in_its_queue(backend: Backend) -> None:
    single_store_only(backend.url, "task_ahead counts the tasks ahead on the task's own shard")
    ids = await _fill(backend, 3)
    high = await submit(backend, priority=9)
    await submit(backend, queue="elsewhere", priority=10)
    assert await backend.task_ahead(ids[2]) == 3
    assert await backend.task_ahead(high) == 0
    (t,) = await claim(backend, 1)
    assert await backend.task_ahead(t.id) == 0
    with pytest.raises(TaskNotFound):
        await backend.task_ahead("nope")
