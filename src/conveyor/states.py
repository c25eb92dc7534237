"""The task state machine: the one table every backend consults.

Backends never decide a transition themselves. Each operation they implement names a
transition here (``claim``, ``complete``, ...), takes the allowed source states from
``sources(transition)`` (SQL engines put them in a ``WHERE state IN (...)`` clause,
the memory engine calls ``check``) and writes ``target(transition)``.
"""

from __future__ import annotations

from enum import StrEnum

from conveyor.errors import InvalidStateTransition


class State(StrEnum):
    WAITING = "waiting"
    SCHEDULED = "scheduled"
    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class FailureReason(StrEnum):
    PERMANENT_ERROR = "permanent_error"
    RETRIES_EXHAUSTED = "retries_exhausted"
    TIMEOUT = "timeout"
    DEPENDENCY_FAILED = "dependency_failed"


TERMINAL: frozenset[State] = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED})
ACTIVE: frozenset[State] = frozenset(State) - TERMINAL
INITIAL: frozenset[State] = frozenset({State.WAITING, State.SCHEDULED, State.PENDING})

_S = State
#: transition name -> (allowed source states, target state)
TRANSITIONS: dict[str, tuple[frozenset[State], State]] = {
    "deps_succeeded": (frozenset({_S.WAITING}), _S.PENDING),
    "dependency_failed": (frozenset({_S.WAITING}), _S.FAILED),
    "due": (frozenset({_S.SCHEDULED, _S.RETRYING}), _S.PENDING),
    "claim": (frozenset({_S.PENDING}), _S.RUNNING),
    "complete": (frozenset({_S.RUNNING}), _S.SUCCEEDED),
    "retry": (frozenset({_S.RUNNING}), _S.RETRYING),
    "fail": (frozenset({_S.RUNNING}), _S.FAILED),
    "lease_expired": (frozenset({_S.RUNNING}), _S.PENDING),
    "lease_expired_final": (frozenset({_S.RUNNING}), _S.FAILED),
    "release": (frozenset({_S.RUNNING}), _S.PENDING),
    "cancel": (ACTIVE, _S.CANCELLED),
    "replay": (frozenset({_S.FAILED}), _S.PENDING),
}


def sources(transition: str) -> frozenset[State]:
    """States from which ``transition`` may be taken."""
    return TRANSITIONS[transition][0]


def target(transition: str) -> State:
    """The state ``transition`` leads to."""
    return TRANSITIONS[transition][1]


def allowed(state: State | str, transition: str) -> bool:
    return State(state) in TRANSITIONS[transition][0]


def check(state: State | str, transition: str, task_id: str = "") -> State:
    """Return the target state, or raise ``InvalidStateTransition``."""
    src, dst = TRANSITIONS[transition]
    if State(state) not in src:
        raise InvalidStateTransition(
            f"cannot {transition} task {task_id} in state {state}".replace("  ", " "),
            task_id=task_id,
            state=str(state),
            transition=transition,
        )
    return dst


def sql_in(transition: str) -> str:
    """``'a','b'`` literal list of source states, for SQL ``state IN (...)`` clauses."""
    return ",".join(f"'{s.value}'" for s in sorted(sources(transition)))
