"""Errors raised by Conveyor, each with the stable ``code`` the HTTP API and CLI report.

Two families live here: operational errors (``ConveyorError`` and subclasses), which
callers catch, and the control-flow exceptions task code raises (``Retry``,
``Permanent``) to steer the retry policy.
"""

from __future__ import annotations

from typing import Any


class ConveyorError(Exception):
    """Base class; ``code`` is the machine-readable name used in API error bodies."""

    code = "ConveyorError"
    exit_code = 1  # CLI exit code when this error ends a command

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The one error shape of the HTTP API: ``{"error": {code, message, details}}``."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class InvalidInput(ConveyorError):
    """Input failed validation (bad priority, malformed args, unknown option...)."""

    code = "ValidationError"
    exit_code = 2


class ConfigError(InvalidInput):
    """``conveyor.yaml`` or ``CONVEYOR_*`` settings are invalid."""


class QueueFull(ConveyorError):
    """The queue holds ``max_length`` unfinished tasks; the submit stored nothing."""

    code = "QueueFull"


class TaskNotFound(ConveyorError):
    code = "TaskNotFound"


class DependencyNotFound(InvalidInput, TaskNotFound):
    """A submit's ``depends_on`` names no stored task: bad input (HTTP 422, CLI exit 2),
    and still a ``TaskNotFound`` for callers that catch that. ``task_id`` is the unknown id."""


class TaskExists(ConveyorError):
    code = "TaskExists"


class NoWorkers(ConveyorError):
    code = "NoWorkers"


class WorkerNotFound(ConveyorError):
    code = "WorkerNotFound"


class RateLimited(ConveyorError):
    code = "RateLimited"


class InvalidStateTransition(ConveyorError):
    """A transition the table in ``conveyor.states`` does not allow (HTTP 409)."""

    code = "InvalidStateTransition"


class Unauthorized(ConveyorError):
    """No bearer token, or one that matches no configured token (HTTP 401)."""

    code = "Unauthorized"


class Forbidden(ConveyorError):
    """The token is valid but its role is too low for the operation (HTTP 403)."""

    code = "Forbidden"


class PayloadTooLarge(InvalidInput):
    """A request body over the API's size limit (HTTP 413)."""

    code = "PayloadTooLarge"


class FeatureUnavailable(ConveyorError):
    """The operation exists in the spec but this build does not provide it yet (HTTP 501)."""

    code = "NotImplemented"


class UnknownTask(InvalidInput):
    """A task name no registered function handles."""


class BackendUnavailable(ConveyorError):
    """The engine could not be reached; nothing was written."""

    code = "BackendUnavailable"


class TaskTimeout(Exception):
    """Recorded as error type ``Timeout`` when an attempt runs past its ``timeout``."""


class Retry(Exception):
    """Raise from task code to retry this attempt, optionally after ``delay`` seconds.

    It still consumes an attempt; when none are left the task is dead-lettered with
    ``retries_exhausted``.
    """

    def __init__(self, delay: float | None = None, message: str = "retry requested") -> None:
        super().__init__(message)
        self.delay = delay


class Permanent(Exception):
    """Raise from task code to fail at once, without retries (``permanent_error``)."""
