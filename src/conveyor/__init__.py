"""Conveyor: a distributed task queue and scheduler for Python.

from conveyor import Conveyor

app = Conveyor("sqlite:///conveyor.db")

@app.task(queue="emails", priority="high", max_retries=5)
async def send_email(to: str, subject: str) -> str: ...

handle = send_email.submit(to="a@b.c", subject="hi")
handle.result(timeout=10)
"""

__version__ = "0.1.0"

from conveyor.app import Conveyor
from conveyor.context import TaskContext, current
from conveyor.errors import (
    ConveyorError,
    InvalidInput,
    InvalidStateTransition,
    Permanent,
    QueueFull,
    Retry,
    TaskNotFound,
)
from conveyor.models import Task, TaskError, TaskSpec, WorkerInfo
from conveyor.retry import RetryPolicy
from conveyor.states import FailureReason, State
from conveyor.task import TaskCancelled, TaskFailed, TaskHandle
from conveyor.workflows import Workflow, WorkflowNode, WorkflowSpec, WorkflowState

__all__ = [
    # the application
    "Conveyor",
    "TaskHandle",
    # inside task code
    "TaskContext",
    "current",
    # task code steers retries
    "Permanent",
    "Retry",
    "RetryPolicy",
    # data
    "FailureReason",
    "State",
    "Task",
    "TaskError",
    "TaskSpec",
    "WorkerInfo",
    "Workflow",
    "WorkflowNode",
    "WorkflowSpec",
    "WorkflowState",
    # errors callers catch
    "ConveyorError",
    "InvalidInput",
    "InvalidStateTransition",
    "QueueFull",
    "TaskCancelled",
    "TaskFailed",
    "TaskNotFound",
    "__version__",
]
