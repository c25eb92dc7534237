"""Random operation sequences against each engine, checked against a small model.

A ``RuleBasedStateMachine`` drives enqueue / claim / complete / retry / fail / cancel /
reap / heartbeat / release / replay / purge with a controllable clock (the ``now``
params), keeps the expected state of every task, and after each step checks that the
engine agrees: states and attempts, histories that follow the transition table,
one holder per running task, stale tokens that change nothing, and the stats.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, ClassVar, Literal, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from conveyor import states
from conveyor.backends import make_backend
from conveyor.backends.base import (
    CancelParams,
    ClaimParams,
    HeartbeatParams,
    Lease,
    Outcome,
    ReapParams,
    ReleaseParams,
    TaskFilter,
)
from conveyor.errors import InvalidStateTransition, TaskNotFound
from conveyor.models import Task, WorkerState
from conveyor.states import FailureReason, State
from tests.services import drop_store

from .helpers import enqueue, error, format_url, new_task, single_store_only, url_params, worker_info

T = TypeVar("T")
SETTINGS = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
WORKER = "w1"


@dataclass
class Expected:
    """What the model believes about one task."""

    state: State
    attempts: int
    queue: str
    priority: int
    run_at: float
    requires: frozenset[str]
    max_retries: int
    depends_on: tuple[str, ...]


@dataclass
class Held:
    token: str
    expires: float


class ContractMachine(RuleBasedStateMachine):
    URL_TEMPLATE: ClassVar[str] = "memory://{name}"

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="conveyor-contract-")
        self.loop = asyncio.new_event_loop()
        self.backend = make_backend(format_url(self.URL_TEMPLATE, self.tmp))
        self.run(self.backend.open())
        self.run(self.backend.worker_register(worker_info(WORKER)))
        self.now = time.time() + 1.0  # the clock every ``now`` param reads
        self.model: dict[str, Expected] = {}
        self.held: dict[str, Held] = {}  # running task id -> the one live lease
        self.stale: list[tuple[str, str]] = []  # (task id, token) that lost its lease
        self.tokens_seen: set[str] = set()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            self.run(self.backend.close())
        finally:
            self.loop.close()
            shutil.rmtree(self.tmp, ignore_errors=True)
            drop_store(self.backend.url)  # a server engine's schema or keys of this example

    # --- the model ---------------------------------------------------------------------

    def pick(self, ids: list[str], index: int) -> str:
        return sorted(ids)[index % len(ids)]

    def ids_in(self, *wanted: State) -> list[str]:
        return [i for i, e in self.model.items() if e.state in wanted]

    def move(self, task_id: str, transition: str) -> None:
        """Apply a transition to the model (checked against the table) and settle dependents."""
        expected = self.model[task_id]
        expected.state = states.check(expected.state, transition, task_id)
        if expected.state is not State.RUNNING and task_id in self.held:
            self.stale.append((task_id, self.held.pop(task_id).token))
        if expected.state in states.TERMINAL:
            self.settle()

    def settle(self) -> None:
        """Waiting tasks whose dependencies all succeeded run; one failed or cancelled fails them."""
        changed = True
        while changed:
            changed = False
            for task_id in self.ids_in(State.WAITING):
                deps = [self.model[d].state for d in self.model[task_id].depends_on]
                if any(s in (State.FAILED, State.CANCELLED) for s in deps):
                    self.model[task_id].state = states.target("dependency_failed")
                    changed = True
                elif all(s is State.SUCCEEDED for s in deps):
                    self.model[task_id].state = states.target("deps_succeeded")
                    changed = True

    def get(self, task_id: str) -> Task:
        return self.run(self.backend.task_get(task_id))

    # --- rules -------------------------------------------------------------------------

    TASK = st.fixed_dictionaries(
        {
            "queue": st.sampled_from(["a", "b"]),
            "priority": st.sampled_from([0, 5, 5, 9]),
            "delay": st.sampled_from([None, None, 0.5, 30.0, 300.0]),
            "requires": st.sampled_from([(), (), ("gpu",)]),
            "max_retries": st.integers(0, 2),
            "dep": st.none() | st.integers(0, 1000),
        }
    )

    @initialize(specs=st.lists(TASK, min_size=2, max_size=8))
    def enqueue_some(self, specs: list[dict[str, Any]]) -> None:
        for spec in specs:
            self.enqueue_one(**spec)

    @rule(spec=TASK)
    def enqueue_task(self, spec: dict[str, Any]) -> None:
        self.enqueue_one(**spec)

    def enqueue_one(
        self,
        queue: str,
        priority: int,
        delay: float | None,
        requires: tuple[str, ...],
        max_retries: int,
        dep: int | None,
    ) -> None:
        depends_on = [self.pick(list(self.model), dep)] if dep is not None and self.model else []
        t = new_task(queue=queue, priority=priority, requires=list(requires), max_retries=max_retries)
        t.depends_on = depends_on
        if delay is not None:
            t.run_at = self.now + delay
        (done,) = self.run(enqueue(self.backend, t))
        self.model[t.id] = Expected(
            t.initial_state, 0, queue, priority, t.run_at, frozenset(requires), max_retries, tuple(depends_on)
        )
        self.settle()
        assert (done.id, done.created, done.state) == (t.id, True, self.model[t.id].state)

    @rule(limit=st.integers(1, 3), gpu=st.booleans(), lease=st.sampled_from([5.0, 30.0]))
    def claim(self, limit: int, gpu: bool, lease: float) -> None:
        for task_id in self.ids_in(State.SCHEDULED, State.RETRYING):
            if self.model[task_id].run_at <= self.now:
                self.move(task_id, "due")
        tags = frozenset({"gpu"}) if gpu else frozenset()
        ready = [i for i in self.ids_in(State.PENDING) if self.model[i].requires <= tags]
        ready.sort(key=lambda i: (-self.model[i].priority, self.model[i].run_at, i))
        result = self.run(
            self.backend.task_claim(
                ClaimParams(worker_id=WORKER, limit=limit, lease_seconds=lease, tags=tags, now=self.now)
            )
        )
        assert [c.id for c in result.tasks] == ready[:limit]
        for claimed in result.tasks:
            assert claimed.id not in self.held, "a task was handed to two holders"
            assert claimed.lease_token not in self.tokens_seen, "a lease token was reused"
            self.tokens_seen.add(claimed.lease_token)
            self.move(claimed.id, "claim")
            self.model[claimed.id].attempts += 1
            assert claimed.attempts == self.model[claimed.id].attempts
            self.held[claimed.id] = Held(claimed.lease_token, self.now + lease)
        delayed = [self.model[i].run_at for i in self.ids_in(State.SCHEDULED, State.RETRYING)]
        if delayed:
            assert result.next_due is not None and abs(result.next_due - min(delayed)) < 1e-3
        else:
            assert result.next_due is None

    @precondition(lambda self: self.held)
    @rule(
        index=st.integers(0, 1000),
        kind=st.sampled_from(["complete", "retry", "fail"]),
        delay=st.sampled_from([0.0, 10.0, 100.0]),
    )
    def finish(self, index: int, kind: str, delay: float) -> None:
        """Record one attempt's outcome with its live lease: always accepted."""
        task_id = self.pick(list(self.held), index)
        token = self.held[task_id].token
        if kind == "complete":
            outcome = Outcome(task_id, token, "complete", WORKER, result={"ok": 1}, finished_at=self.now)
        elif kind == "retry":
            outcome = Outcome(task_id, token, "retry", WORKER, error=error(), run_at=self.now + delay)
            self.model[task_id].run_at = self.now + delay
        else:
            reason = FailureReason.PERMANENT_ERROR
            outcome = Outcome(task_id, token, "fail", WORKER, error=error(), failure_reason=reason)
        assert self.run(self.backend.task_finish_many([outcome])) == [True]
        self.move(task_id, kind)

    @precondition(lambda self: self.model)
    @rule(index=st.integers(0, 1000))
    def cancel(self, index: int) -> None:
        task_id = self.pick(list(self.model), index)
        if states.allowed(self.model[task_id].state, "cancel"):
            assert self.run(self.backend.task_cancel(CancelParams(task_id))).state is State.CANCELLED
            self.move(task_id, "cancel")
        else:
            before = self.get(task_id)
            try:
                self.run(self.backend.task_cancel(CancelParams(task_id)))
            except InvalidStateTransition:
                pass
            else:
                raise AssertionError(f"cancel of a {before.state} task did not raise")
            assert self.get(task_id) == before

    @rule(seconds=st.sampled_from([1.0, 10.0, 40.0, 400.0]))
    def advance_clock(self, seconds: float) -> None:
        self.now += seconds

    @precondition(lambda self: self.held)
    @rule()
    def reap(self) -> None:
        lapsed = sorted(i for i, h in self.held.items() if h.expires < self.now)
        assert sorted(self.run(self.backend.task_reap_expired(ReapParams(now=self.now)))) == lapsed
        for task_id in lapsed:
            final = self.model[task_id].attempts > self.model[task_id].max_retries
            self.move(task_id, "lease_expired_final" if final else "lease_expired")

    @precondition(lambda self: self.held or self.stale)
    @rule(with_stale=st.booleans())
    def heartbeat(self, with_stale: bool) -> None:
        leases = [Lease(i, h.token) for i, h in self.held.items()]
        stale = self.stale[-3:] if with_stale else []
        leases += [Lease(i, token) for i, token in stale]
        params = HeartbeatParams(WORKER, WorkerState.BUSY, leases, lease_seconds=30.0, now=self.now)
        assert sorted(self.run(self.backend.worker_heartbeat(params))) == sorted(i for i, _ in stale)
        for held in self.held.values():
            held.expires = self.now + 30.0

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, 1000), refund=st.booleans())
    def release(self, index: int, refund: bool) -> None:
        task_id = self.pick(list(self.held), index)
        lease = Lease(task_id, self.held[task_id].token, refund=refund)
        assert self.run(self.backend.task_release(ReleaseParams(WORKER, [lease]))) == 1
        self.move(task_id, "release")
        if refund:
            self.model[task_id].attempts -= 1

    @precondition(lambda self: any(e.state is State.FAILED for e in self.model.values()))
    @rule(index=st.none() | st.integers(0, 1000))
    def replay(self, index: int | None) -> None:
        every = list(self.model)
        ids = None if index is None or not every else [self.pick(every, index)]
        chosen = [i for i in (ids or every) if self.model[i].state is State.FAILED]
        assert self.run(self.backend.task_replay(TaskFilter(ids=ids))) == len(chosen)
        for task_id in chosen:
            self.move(task_id, "replay")
            self.model[task_id].attempts = 0
            self.model[task_id].run_at = self.get(task_id).run_at.timestamp()

    @precondition(lambda self: any(e.state is State.FAILED for e in self.model.values()))
    @rule(index=st.integers(0, 1000))
    def purge(self, index: int) -> None:
        task_id = self.pick(self.ids_in(State.FAILED), index)
        assert self.run(self.backend.task_purge(TaskFilter(ids=[task_id]))) == 1
        del self.model[task_id]
        try:
            self.get(task_id)
        except TaskNotFound:
            pass
        else:
            raise AssertionError("a purged task is still there")

    @precondition(lambda self: self.stale)
    @rule(index=st.integers(0, 1000), kind=st.sampled_from(["complete", "retry", "fail", "release"]))
    def use_a_stale_token(self, index: int, kind: Literal["complete", "retry", "fail", "release"]) -> None:
        task_id, token = self.stale[index % len(self.stale)]
        if task_id not in self.model:
            return
        before = self.get(task_id)
        if kind == "release":
            assert self.run(self.backend.task_release(ReleaseParams(WORKER, [Lease(task_id, token)]))) == 0
        else:
            outcome = Outcome(
                task_id,
                token,
                kind,
                WORKER,
                error=error(),
                run_at=self.now,
                failure_reason=FailureReason.PERMANENT_ERROR,
            )
            assert self.run(self.backend.task_finish_many([outcome])) == [False]
        assert self.get(task_id) == before

    # --- invariants --------------------------------------------------------------------

    @invariant()
    def every_task_matches_the_model_and_its_history_follows_the_table(self) -> None:
        for task_id, expected in self.model.items():
            task = self.get(task_id)
            assert (task.state, task.attempts) == (expected.state, expected.attempts), task_id
            assert task.history[0].state in states.INITIAL
            for before, after in pairwise(task.history):
                assert before.state in states.sources(after.transition), (task_id, before, after)
                assert after.state is states.target(after.transition)
            assert task.history[-1].state is task.state
            if task_id in self.held:
                assert task.lease_expires_at is not None
                assert abs(task.lease_expires_at.timestamp() - self.held[task_id].expires) < 1e-3
            else:
                assert task.lease_expires_at is None

    @invariant()
    def running_tasks_are_exactly_the_held_ones(self) -> None:
        assert set(self.ids_in(State.RUNNING)) == set(self.held)

    @invariant()
    def stats_match_the_model(self) -> None:
        stats = self.run(self.backend.stats())
        expected = Counter(e.state.value for e in self.model.values())
        assert {k: v for k, v in stats.counts.items() if v} == dict(expected)
        assert stats.dlq_size == expected.get(State.FAILED.value, 0)
        for queue in stats.queues:
            in_queue = Counter(e.state.value for e in self.model.values() if e.queue == queue.name)
            assert {k: v for k, v in queue.counts.items() if v} == dict(in_queue), queue.name


@pytest.mark.timeout(900)  # a pass takes seconds; shrinking a failure can take minutes
@pytest.mark.parametrize("url_template", url_params())
def test_random_operation_sequences_keep_the_contract(url_template: str) -> None:
    single_store_only(url_template, "the model expects ring-wide claim order (see tests/unit/test_sharded.py)")
    machine = type("ContractMachine", (ContractMachine,), {"URL_TEMPLATE": url_template})
    run_state_machine_as_test(machine, settings=SETTINGS)
