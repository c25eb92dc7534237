"""The engine-independent rules: states table, retry policy, priorities, ids, settings."""

from __future__ import annotations

import os
import random
import re
import threading
import time
import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from conveyor import states
from conveyor.config import DEFAULT_URL, Settings, load_settings
from conveyor.errors import ConfigError, InvalidInput, InvalidStateTransition, Permanent, Retry, TaskTimeout
from conveyor.ids import new_id
from conveyor.models import TaskSpec
from conveyor.priority import Band, PriorityRule, band_of, band_range, default_rules, parse_priority, resolve_priority
from conveyor.retry import RetryPolicy, decide
from conveyor.states import ACTIVE, INITIAL, TERMINAL, TRANSITIONS, FailureReason, State

# --- the state machine ---------------------------------------------------------------


def test_transition_table_matches_the_spec_diagram() -> None:
    table = {name: (set(src), dst) for name, (src, dst) in TRANSITIONS.items()}
    S = State
    assert table == {
        "deps_succeeded": ({S.WAITING}, S.PENDING),
        "dependency_failed": ({S.WAITING}, S.FAILED),
        "due": ({S.SCHEDULED, S.RETRYING}, S.PENDING),
        "claim": ({S.PENDING}, S.RUNNING),
        "complete": ({S.RUNNING}, S.SUCCEEDED),
        "retry": ({S.RUNNING}, S.RETRYING),
        "fail": ({S.RUNNING}, S.FAILED),
        "lease_expired": ({S.RUNNING}, S.PENDING),
        "lease_expired_final": ({S.RUNNING}, S.FAILED),
        "release": ({S.RUNNING}, S.PENDING),
        "cancel": ({S.WAITING, S.SCHEDULED, S.PENDING, S.RUNNING, S.RETRYING}, S.CANCELLED),
        "replay": ({S.FAILED}, S.PENDING),
    }


def test_terminal_states_are_left_only_by_replaying_a_failure() -> None:
    assert {State.SUCCEEDED, State.FAILED, State.CANCELLED} == TERMINAL
    assert set(State) - TERMINAL == ACTIVE
    leaving = {name for name, (src, _) in TRANSITIONS.items() if src & TERMINAL}
    assert leaving == {"replay"}


def test_every_state_is_reachable_from_an_initial_state() -> None:
    reached = set(INITIAL)
    while True:
        more = {dst for src, dst in TRANSITIONS.values() if src & reached} - reached
        if not more:
            break
        reached |= more
    assert reached == set(State)


@pytest.mark.parametrize("transition", sorted(TRANSITIONS))
def test_check_returns_the_target_from_every_allowed_source(transition: str) -> None:
    for state in State:
        if state in states.sources(transition):
            assert states.allowed(state, transition)
            assert states.check(state, transition) is states.target(transition)
            assert states.check(state.value, transition) is states.target(transition)
        else:
            assert not states.allowed(state, transition)
            with pytest.raises(InvalidStateTransition):
                states.check(state, transition)


def test_invalid_transition_error_names_the_task_state_and_transition() -> None:
    with pytest.raises(InvalidStateTransition) as caught:
        states.check(State.SUCCEEDED, "cancel", "t-1")
    err = caught.value
    assert err.code == "InvalidStateTransition"
    assert err.details == {"task_id": "t-1", "state": "succeeded", "transition": "cancel"}
    assert "cancel" in err.message and "t-1" in err.message
    assert err.to_dict()["error"]["code"] == "InvalidStateTransition"


def test_check_without_a_task_id_reads_cleanly() -> None:
    with pytest.raises(InvalidStateTransition, match=r"^cannot claim task in state running$"):
        states.check(State.RUNNING, "claim")


def test_sql_in_lists_the_sources_as_sorted_literals() -> None:
    assert states.sql_in("due") == "'retrying','scheduled'"
    assert states.sql_in("claim") == "'pending'"


# --- retry policy --------------------------------------------------------------------


def test_backoff_without_jitter_is_exponential_and_capped() -> None:
    policy = RetryPolicy(base=1.0, factor=2.0, max=300.0, jitter=False)
    assert [policy.backoff(n) for n in range(5)] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert policy.backoff(9) == 300.0  # 512 capped
    assert policy.backoff(100_000) == 300.0  # no overflow on absurd retry numbers


def test_backoff_defaults_follow_the_spec() -> None:
    policy = RetryPolicy()
    assert (policy.max_retries, policy.base, policy.factor, policy.max, policy.jitter) == (3, 1.0, 2.0, 300.0, True)


@pytest.mark.parametrize("retry_number", [0, 1, 3, 8, 20])
def test_full_jitter_stays_within_zero_and_the_cap(retry_number: int) -> None:
    policy = RetryPolicy(base=0.5, factor=3.0, max=60.0)
    cap = min(60.0, 0.5 * 3.0**retry_number)
    rng = random.Random(retry_number)
    delays = [policy.backoff(retry_number, rng) for _ in range(500)]
    assert all(0.0 <= d <= cap for d in delays)
    assert min(delays) < cap * 0.1 and max(delays) > cap * 0.9  # spread over the whole range


def test_full_jitter_is_reproducible_with_a_seeded_rng() -> None:
    policy = RetryPolicy()
    assert policy.backoff(4, random.Random(7)) == policy.backoff(4, random.Random(7))


def test_retry_policy_refuses_unknown_fields_and_bad_values() -> None:
    with pytest.raises(ValidationError):
        RetryPolicy(bse=1.0)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        RetryPolicy(factor=0.5)
    with pytest.raises(ValidationError):
        RetryPolicy(max_retries=-1)


def test_retryable_error_with_attempts_left_retries_after_backoff() -> None:
    policy = RetryPolicy(max_retries=3, base=2.0, factor=2.0, max=100.0, jitter=False)
    decision = decide(ValueError("flaky"), attempts=2, policy=policy)
    assert (decision.retry, decision.delay, decision.reason, decision.retryable) == (True, 4.0, None, True)


def test_first_retry_uses_the_base_delay() -> None:
    policy = RetryPolicy(base=3.0, jitter=False)
    assert decide(RuntimeError(), attempts=1, policy=policy).delay == 3.0


def test_retry_with_a_delay_overrides_the_backoff() -> None:
    decision = decide(Retry(delay=42.0), attempts=1, policy=RetryPolicy(jitter=False))
    assert (decision.retry, decision.delay) == (True, 42.0)


def test_retry_with_a_negative_delay_retries_at_once() -> None:
    assert decide(Retry(delay=-5), attempts=1, policy=RetryPolicy()).delay == 0.0


def test_retry_without_a_delay_uses_the_backoff() -> None:
    policy = RetryPolicy(base=5.0, jitter=False)
    assert decide(Retry(), attempts=2, policy=policy).delay == 10.0


def test_retry_is_retryable_even_outside_retry_on() -> None:
    decision = decide(Retry(), attempts=1, policy=RetryPolicy(), retry_on=(KeyError,))
    assert decision.retry


def test_retry_still_consumes_attempts_and_exhausts() -> None:
    decision = decide(Retry(delay=1), attempts=4, policy=RetryPolicy(max_retries=3))
    assert (decision.retry, decision.reason) == (False, FailureReason.RETRIES_EXHAUSTED)


def test_permanent_fails_at_once_even_with_attempts_left() -> None:
    decision = decide(Permanent("bad input"), attempts=1, policy=RetryPolicy(max_retries=10))
    assert (decision.retry, decision.reason, decision.retryable) == (False, FailureReason.PERMANENT_ERROR, False)


def test_permanent_on_beats_retry_on() -> None:
    decision = decide(
        ValueError("x"), attempts=1, policy=RetryPolicy(), retry_on=(ValueError,), permanent_on=(ValueError,)
    )
    assert (decision.retry, decision.reason) == (False, FailureReason.PERMANENT_ERROR)


def test_permanent_on_matches_subclasses() -> None:
    decision = decide(FileNotFoundError(), attempts=1, policy=RetryPolicy(), permanent_on=(OSError,))
    assert decision.reason is FailureReason.PERMANENT_ERROR


def test_error_outside_retry_on_is_permanent() -> None:
    decision = decide(TypeError("bug"), attempts=1, policy=RetryPolicy(), retry_on=(ConnectionError,))
    assert (decision.retry, decision.reason, decision.retryable) == (False, FailureReason.PERMANENT_ERROR, False)


def test_error_in_retry_on_is_retried() -> None:
    decision = decide(ConnectionResetError(), attempts=1, policy=RetryPolicy(), retry_on=(ConnectionError,))
    assert decision.retry


def test_retryable_error_without_attempts_left_is_retries_exhausted() -> None:
    policy = RetryPolicy(max_retries=2)
    assert decide(ValueError(), attempts=2, policy=policy).retry
    decision = decide(ValueError(), attempts=3, policy=policy)
    assert (decision.retry, decision.reason, decision.retryable) == (False, FailureReason.RETRIES_EXHAUSTED, True)


def test_timeout_with_attempts_left_is_retried() -> None:
    decision = decide(TaskTimeout(), attempts=1, policy=RetryPolicy(), retry_on=(KeyError,))
    assert decision.retry


def test_timeout_without_attempts_left_fails_with_reason_timeout() -> None:
    decision = decide(TaskTimeout(), attempts=4, policy=RetryPolicy(max_retries=3))
    assert (decision.retry, decision.reason) == (False, FailureReason.TIMEOUT)


def test_zero_max_retries_fails_on_the_first_error() -> None:
    decision = decide(ValueError(), attempts=1, policy=RetryPolicy(max_retries=0))
    assert decision.reason is FailureReason.RETRIES_EXHAUSTED


# --- priorities ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (0, 0),
        (10, 10),
        ("7", 7),
        (" 3 ", 3),
        ("critical", 10),
        ("HIGH", 8),
        (" normal ", 5),
        ("low", 2),
    ],
)
def test_parse_priority_accepts_numbers_and_names(given: int | str, expected: int) -> None:
    assert parse_priority(given) == expected


@pytest.mark.parametrize("given", [11, -1, "11", "-1", "urgent", "", "5.5", True, False, 2.0, None])
def test_parse_priority_refuses_everything_else(given: object) -> None:
    with pytest.raises(InvalidInput):
        parse_priority(given)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("priority", "band"),
    [(0, Band.LOW), (3, Band.LOW), (4, Band.MEDIUM), (7, Band.MEDIUM), (8, Band.HIGH), (10, Band.HIGH)],
)
def test_band_of_follows_the_spec_boundaries(priority: int, band: Band) -> None:
    assert band_of(priority) is band
    low, high = band_range(band)
    assert low <= priority <= high


def test_band_ranges_cover_zero_to_ten_without_overlap() -> None:
    covered = [p for band in Band for p in range(band_range(band)[0], band_range(band)[1] + 1)]
    assert sorted(covered) == list(range(11))
    assert band_range("high") == (8, 10)


def test_task_spec_parses_named_priorities_and_refuses_bad_ones() -> None:
    assert TaskSpec(name="a.b", priority="high").priority == 8
    assert TaskSpec(name="a.b").priority is None
    with pytest.raises(ValidationError) as caught:
        TaskSpec(name="a.b", priority=42, queue="bad queue!")
    assert {err["loc"] for err in caught.value.errors()} == {("priority",), ("queue",)}


RULES = [
    PriorityRule(labels="hotfix|urgent|critical", priority="critical"),
    PriorityRule(args={"repo": "core|main|production"}, priority=8),
    PriorityRule(name=r"^report\.", queue="^batch$", priority="low"),
]


@pytest.mark.parametrize(
    ("name", "queue", "labels", "args", "expected"),
    [
        ("build", "default", ["urgent"], {}, 10),
        ("build", "default", ["x", "team-hotfix"], {"repo": "core"}, 10),  # first match wins
        ("build", "default", [], {"repo": "main-site"}, 8),
        ("build", "default", [], {"repo": 42}, 5),  # string form does not match
        ("build", "default", [], {"other": "core"}, 5),  # the key must be present
        ("report.daily", "batch", [], {}, 2),
        ("report.daily", "default", [], {}, 5),  # every condition must match
        ("build", "default", [], {}, 5),
    ],
)
def test_priority_rules_first_match_wins_else_default(
    name: str, queue: str, labels: list[str], args: dict[str, object], expected: int
) -> None:
    assert resolve_priority(RULES, name, queue, labels, args) == expected


def test_priority_rule_args_match_the_value_string_form() -> None:
    rule = PriorityRule(args={"n": "^4[0-9]$"}, priority=9)
    assert rule.matches("t", "q", [], {"n": 42})
    assert not rule.matches("t", "q", [], {"n": 420})


def test_resolve_priority_uses_the_given_default() -> None:
    assert resolve_priority([], "t", "q", [], {}, default=3) == 3


def test_priority_rule_refuses_bad_regex_bad_priority_and_unknown_keys() -> None:
    with pytest.raises(ValidationError):
        PriorityRule(labels="(unclosed", priority=5)
    with pytest.raises(ValidationError):
        PriorityRule(priority=99)
    with pytest.raises(ValidationError):
        PriorityRule(label="x", priority=5)  # type: ignore[call-arg]


# --- ids -----------------------------------------------------------------------------

UUID_SHAPE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_new_id_is_a_uuid_v7_carrying_the_current_time() -> None:
    before = time.time_ns() // 1_000_000
    value = new_id()
    after = time.time_ns() // 1_000_000
    assert UUID_SHAPE.match(value)
    parsed = uuid.UUID(value)
    assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
    assert before <= int(value.replace("-", "")[:12], 16) <= after + 1


def test_new_ids_are_unique_and_increase_within_a_process() -> None:
    ids = [new_id() for _ in range(20_000)]  # many share a millisecond
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


def test_new_ids_from_many_threads_are_unique() -> None:
    found: list[list[str]] = [[] for _ in range(8)]

    def make(out: list[str]) -> None:
        out.extend(new_id() for _ in range(2000))

    threads = [threading.Thread(target=make, args=(out,)) for out in found]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for out in found for i in out]
    assert len(set(every)) == len(every)
    assert all(out == sorted(out) for out in found)


# --- settings ------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No ``CONVEYOR_*`` variables, and a working directory without ``conveyor.yaml``."""
    for name in list(os.environ):
        if name.startswith("CONVEYOR_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_settings_default_without_file_or_environment(clean_env: Path) -> None:
    settings = load_settings()
    assert settings.url == DEFAULT_URL
    assert (settings.worker.concurrency, settings.worker.lease_seconds, settings.worker.offline_after) == (
        10,
        30.0,
        30.0,
    )
    assert settings.queues == {} and settings.max_lengths() == {}
    assert settings.priority_rules == default_rules()  # SPEC §4's example rules


def test_the_default_rules_are_the_specs_and_config_can_turn_them_off(clean_env: Path) -> None:
    rules = load_settings().priority_rules
    assert resolve_priority(rules, "deploy", "default", ["hotfix"], {}) == 10
    assert resolve_priority(rules, "build", "default", [], {"repo": "production"}) == 8
    assert resolve_priority(rules, "build", "default", ["docs"], {"repo": "blog"}) == 5
    assert Settings(priority_rules=[]).priority_rules == []


def test_settings_read_the_yaml_file_named_by_conveyor_config(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(
        clean_env / "elsewhere.yaml",
        """
url: sqlite:///from-file.db
queues:
  emails: {max_length: 100}
  bulk: {}
priority_rules:
  - labels: hotfix|urgent
    priority: critical
  - args: {repo: core}
    priority: 8
retry: {max_retries: 5, base: 0.5}
worker:
  concurrency: 4
  pool: threads
""",
    )
    monkeypatch.setenv("CONVEYOR_CONFIG", str(config))
    settings = load_settings()
    assert settings.url == "sqlite:///from-file.db"
    assert settings.max_lengths() == {"emails": 100}
    assert [r.priority for r in settings.priority_rules] == [10, 8]
    assert (settings.retry.max_retries, settings.retry.base, settings.retry.max) == (5, 0.5, 300.0)
    assert (settings.worker.concurrency, settings.worker.pool) == (4, "threads")


def test_settings_read_conveyor_yaml_in_the_working_directory(clean_env: Path) -> None:
    write(clean_env / "conveyor.yaml", "url: memory://here\n")
    assert load_settings().url == "memory://here"


def test_environment_beats_the_file_and_nests_with_double_underscore(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(clean_env / "conveyor.yaml", "url: sqlite:///file.db\nworker: {concurrency: 4, pool: threads}\n")
    monkeypatch.setenv("CONVEYOR_URL", "memory://from-env")
    monkeypatch.setenv("CONVEYOR_WORKER__CONCURRENCY", "20")
    settings = load_settings()
    assert settings.url == "memory://from-env"
    assert (settings.worker.concurrency, settings.worker.pool) == (20, "threads")


@pytest.mark.parametrize(("value", "expected"), [(None, "auto"), ("auto", "auto"), ("0", 0), ("25", 25)])
def test_prefetch_is_auto_or_a_number(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, value: str | None, expected: int | str
) -> None:
    if value is not None:
        monkeypatch.setenv("CONVEYOR_WORKER__PREFETCH", value)
    assert load_settings().worker.prefetch == expected


@pytest.mark.parametrize("value", ["many", "-1", "2.5", "10001", "Auto"])
def test_a_bad_prefetch_gets_one_clear_error(clean_env: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CONVEYOR_WORKER__PREFETCH", value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value).count("worker.prefetch") == 1
    assert f"expected 'auto' or a number of tasks from 0 to 10000, got {value!r}" in str(err.value)


def test_explicit_arguments_beat_the_environment(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_URL", "memory://from-env")
    assert load_settings(url="sqlite:///explicit.db").url == "sqlite:///explicit.db"
    assert load_settings(url=None).url == "memory://from-env"  # None means "not given"


@pytest.mark.parametrize(
    "text",
    [
        "urll: sqlite:///typo.db\n",
        "worker: {concurency: 4}\n",
        "queues: {emails: {max_lenght: 3}}\n",
        "priority_rules: [{labell: x, priority: 5}]\n",
        "retry: {jitterr: false}\n",
    ],
)
def test_unknown_keys_in_the_file_are_refused(clean_env: Path, text: str) -> None:
    write(clean_env / "conveyor.yaml", text)
    with pytest.raises(ConfigError, match="invalid configuration"):
        load_settings()


def test_unknown_nested_environment_key_is_refused(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_WORKER__CONCURENCY", "4")
    with pytest.raises(ConfigError, match="concurency"):
        load_settings()


@pytest.mark.parametrize(
    "text",
    [
        "worker: {concurrency: 0}\n",
        "worker: {pool: fibers}\n",
        "default_priority: 11\n",
        "queues: {q: {max_length: 0}}\n",
        "priority_rules: [{labels: x, priority: 99}]\n",
        "priority_rules: [{labels: x, priority: urgent}]\n",
    ],
)
def test_invalid_values_are_refused(clean_env: Path, text: str) -> None:
    write(clean_env / "conveyor.yaml", text)
    with pytest.raises(ConfigError):
        load_settings()


def test_missing_config_file_named_by_conveyor_config_is_an_error(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_CONFIG", str(clean_env / "nope.yaml"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings()


@pytest.mark.parametrize(("text", "problem"), [("url: [unclosed\n", "not valid YAML"), ("- a\n- b\n", "mapping")])
def test_malformed_config_file_is_an_error(clean_env: Path, text: str, problem: str) -> None:
    write(clean_env / "conveyor.yaml", text)
    with pytest.raises(ConfigError, match=problem):
        load_settings()


def test_empty_config_file_means_defaults(clean_env: Path) -> None:
    write(clean_env / "conveyor.yaml", "")
    assert load_settings().url == DEFAULT_URL


def test_config_error_is_a_validation_error_with_exit_code_two() -> None:
    err = ConfigError("bad")
    assert isinstance(err, InvalidInput)
    assert (err.code, err.exit_code) == ("ValidationError", 2)
