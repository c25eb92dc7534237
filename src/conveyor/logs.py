"""One logging setup for the worker, the API and the CLI: JSON lines or console text.

``setup_logging(fmt, level)`` installs one handler on the ``conveyor`` logger (and on
uvicorn's, for the API). JSON is the default when stderr is not a terminal, so logs
shipped from containers parse as they are; ``--log-format console`` gives readable
lines. The JSON formatter is python-json-logger's.

Every record gets the fields that apply where it was logged, from context variables
rather than from each call site: ``task_id``, ``queue``, ``attempt`` inside an attempt
(``conveyor.context``), ``worker_id`` inside a worker, ``request_id`` inside an HTTP
request and inside the attempts of a task an HTTP request submitted (it travels in the
task's ``headers``). Call sites add ``duration_ms`` and the like through ``extra``.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Literal

from pythonjsonlogger.json import JsonFormatter

from conveyor.context import current_or_none

LogFormat = Literal["json", "console"]
FORMATS: tuple[LogFormat, ...] = ("json", "console")

worker_id_var: ContextVar[str | None] = ContextVar("conveyor_worker_id", default=None)
request_id_var: ContextVar[str | None] = ContextVar("conveyor_request_id", default=None)

_CONSOLE = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_JSON = "%(asctime)s %(levelname)s %(name)s %(message)s"
_LOGGERS = ("conveyor", "uvicorn.error")


class ContextFields(logging.Filter):
    """Adds the ids of the attempt, worker and request the record was logged in."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = current_or_none()
        request_id = request_id_var.get()
        if ctx is not None:
            record.task_id = ctx.task_id
            record.queue = ctx.queue
            record.attempt = ctx.attempt
            request_id = request_id or ctx.request_id  # the submit's, carried in the task
        worker_id = worker_id_var.get()
        if worker_id is not None:
            record.worker_id = worker_id
        if request_id is not None:
            record.request_id = request_id
        return True


def default_format() -> LogFormat:
    """JSON unless stderr is a terminal."""
    return "console" if sys.stderr.isatty() else "json"


def formatter(fmt: LogFormat) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter(_JSON, rename_fields={"levelname": "level", "asctime": "time", "name": "logger"})
    return logging.Formatter(_CONSOLE)


def setup_logging(fmt: LogFormat | None = None, level: str | int = "INFO") -> logging.Handler:
    """Send Conveyor's (and uvicorn's) records to stderr in ``fmt``; returns the handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt or default_format()))
    handler.addFilter(ContextFields())
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(numeric)
        logger.propagate = False
    return handler
