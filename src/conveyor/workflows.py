"""Workflows: a DAG of tasks submitted at once (``POST /workflows``, ``app.submit_workflow``).

A ``WorkflowSpec`` lists nodes; each node is a task submit (every ``TaskSpec`` field)
plus a ``key`` unique in the workflow, and its ``depends_on`` names other nodes by
key. ``plan`` checks the graph (duplicate keys, unknown keys, cycles) before anything
is stored, and turns the nodes into ``NewTask``s whose ``depends_on`` are the ids the
app assigned; the app stores them with one ``task_enqueue_many`` call, so a workflow
is stored whole or not at all. Each stored task carries ``workflow_id`` and
``workflow_key``; the engines then settle dependencies as for any task.

A workflow has no state of its own: ``workflow_state`` derives it from its nodes.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from conveyor.errors import InvalidInput
from conveyor.models import NewTask, Task, TaskSpec
from conveyor.states import State

if TYPE_CHECKING:
    from conveyor.app import Conveyor

KEY_PATTERN = r"^[A-Za-z0-9_.:\-]{1,200}$"
MAX_NODES = 10_000


class WorkflowState(StrEnum):
    """A workflow's state, derived from its nodes by ``workflow_state``."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class WorkflowNode(TaskSpec):
    """One node: a task submit plus its ``key``; ``depends_on`` lists other nodes' keys."""

    key: str = Field(pattern=KEY_PATTERN)


class WorkflowSpec(BaseModel):
    """A DAG to submit at once: ``{"nodes": [{"key", "name", "args", "depends_on": [keys], ...}]}``."""

    model_config = ConfigDict(extra="forbid")

    nodes: list[WorkflowNode] = Field(min_length=1, max_length=MAX_NODES)


class Workflow(BaseModel):
    """A stored workflow (``GET /workflows/{id}``): its derived state and each node's task."""

    id: str
    state: WorkflowState
    nodes: dict[str, Task]


def workflow_state(tasks: Iterable[Task]) -> WorkflowState:
    """The one rule deriving a workflow's state from its nodes' states.

    * some node is unfinished: ``running`` once any node has started (an attempt was
      made or a node already finished), else ``pending``;
    * every node is finished: ``failed`` if any failed (including ``dependency_failed``),
      else ``cancelled`` if any was cancelled, else ``succeeded``.
    """
    nodes = list(tasks)
    finished = [t.state for t in nodes if t.terminal]
    if len(finished) < len(nodes):
        started = finished or any(t.attempts > 0 or t.state is State.RUNNING for t in nodes)
        return WorkflowState.RUNNING if started else WorkflowState.PENDING
    if State.FAILED in finished:
        return WorkflowState.FAILED
    if State.CANCELLED in finished:
        return WorkflowState.CANCELLED
    return WorkflowState.SUCCEEDED


def to_workflow(workflow_id: str, tasks: Sequence[Task], keys: Sequence[str] | None = None) -> Workflow:
    """The ``Workflow`` view of a workflow's stored tasks, keyed by their node keys
    (or by ``keys``, in the same order, when some node is a pre-existing task)."""
    if keys is not None:
        nodes = dict(zip(keys, tasks, strict=True))
    else:
        nodes = {t.workflow_key or t.id: t for t in tasks}
    return Workflow(id=workflow_id, state=workflow_state(tasks), nodes=nodes)


def check_graph(nodes: Sequence[WorkflowNode]) -> list[str]:
    """Refuse duplicate keys, unknown keys and cycles; returns the keys in a topological
    order (parents before children). Raises ``InvalidInput`` naming the problem."""
    dupes = sorted(k for k, n in Counter(n.key for n in nodes).items() if n > 1)
    if dupes:
        raise InvalidInput(f"invalid workflow: duplicate node key(s) {', '.join(dupes)}", keys=dupes)
    parents = {n.key: list(dict.fromkeys(n.depends_on)) for n in nodes}
    for key, deps in parents.items():
        unknown = [d for d in deps if d not in parents]
        if unknown:
            raise InvalidInput(
                f"invalid workflow: node {key!r} depends on unknown key(s) {', '.join(map(repr, unknown))}",
                key=key,
                unknown=unknown,
            )
    return _topological(parents)


def _topological(parents: dict[str, list[str]]) -> list[str]:
    """Kahn's algorithm; the nodes left over when it stalls form (or lead into) a cycle."""
    children: dict[str, list[str]] = {k: [] for k in parents}
    missing = {k: len(ds) for k, ds in parents.items()}
    for key, deps in parents.items():
        for dep in deps:
            children[dep].append(key)
    ready = deque(k for k, n in missing.items() if n == 0)  # in the spec's order
    order: list[str] = []
    while ready:
        key = ready.popleft()
        order.append(key)
        for child in children[key]:
            missing[child] -= 1
            if missing[child] == 0:
                ready.append(child)
    if len(order) < len(parents):
        cycle = _find_cycle({k: ds for k, ds in parents.items() if missing[k] > 0})
        raise InvalidInput(f"invalid workflow: dependency cycle {' -> '.join(cycle)}", cycle=cycle)
    return order


def _find_cycle(parents: dict[str, list[str]]) -> list[str]:
    """One cycle among nodes that Kahn's algorithm could not order (each has a parent there)."""
    start = min(parents)
    path: list[str] = []
    pos: dict[str, int] = {}
    key = start
    while key not in pos:
        pos[key] = len(path)
        path.append(key)
        key = next(d for d in parents[key] if d in parents)
    return [*path[pos[key] :], key]


def plan(
    workflow_id: str, spec: WorkflowSpec, build: Callable[[TaskSpec], NewTask]
) -> tuple[list[NewTask], dict[str, str]]:
    """The tasks to store for ``spec`` (parents first) and ``{key: task id}``.

    ``build`` resolves one submit (defaults, priority rules, argument checks), as
    ``Conveyor.build`` does; any ``InvalidInput`` it raises refuses the workflow.
    """
    order = check_graph(spec.nodes)
    by_key = {n.key: n for n in spec.nodes}
    built: dict[str, NewTask] = {}
    keyed: dict[tuple[str, str], str] = {}  # (queue, idempotency key) -> the node that has it
    for key in order:
        node = by_key[key]
        data: dict[str, Any] = {f: getattr(node, f) for f in node.model_fields_set if f not in ("key", "depends_on")}
        try:
            task = build(TaskSpec.model_validate(data))
        except InvalidInput as exc:
            raise InvalidInput(f"invalid workflow node {key!r}: {exc.message}", key=key) from exc
        if task.idempotency_key is not None:  # two nodes would collapse into one task
            other = keyed.setdefault((task.queue, task.idempotency_key), key)
            if other != key:
                raise InvalidInput(
                    f"workflow nodes {other!r} and {key!r} share idempotency_key {task.idempotency_key!r} "
                    f"on queue {task.queue!r}: they would be one task",
                    key=key,
                )
        task.depends_on = [built[d].id for d in dict.fromkeys(node.depends_on)]
        task.workflow_id, task.workflow_key = workflow_id, key
        built[key] = task
    return list(built.values()), {k: t.id for k, t in built.items()}


class WorkflowBuilder:
    """Builds a ``WorkflowSpec`` node by node; ``app.workflow()`` returns one.

    ``node`` takes a task definition (or a task name), its keyword arguments and any
    submit option (``queue``, ``priority``, ``delay``, ...); ``depends_on`` names keys
    added before or after. ``submit`` / ``submit_async`` store the whole graph at once.
    """

    def __init__(self, app: Conveyor) -> None:
        self.app = app
        self.nodes: list[WorkflowNode] = []

    def node(
        self,
        key: str,
        task: Any,
        args: dict[str, Any] | None = None,
        *,
        depends_on: Sequence[str] = (),
        **options: Any,
    ) -> str:
        """Add one node; returns its key (handy as another node's ``depends_on``)."""
        name = task if isinstance(task, str) else getattr(task, "name", None)
        if not isinstance(name, str):
            raise InvalidInput(f"workflow node {key!r}: expected a task or a task name, got {task!r}")
        data = {"key": key, "name": name, "args": dict(args or {}), "depends_on": list(depends_on), **options}
        self.nodes.append(_validated(WorkflowNode, data))
        return key

    def spec(self) -> WorkflowSpec:
        spec: WorkflowSpec = _validated(WorkflowSpec, {"nodes": self.nodes})
        return spec

    def submit(self) -> Workflow:
        return self.app.submit_workflow(self.spec())

    async def submit_async(self) -> Workflow:
        return await self.app.submit_workflow_async(self.spec())


def _validated(model: type[Any], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'input'}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(f"invalid workflow: {problems}") from exc
