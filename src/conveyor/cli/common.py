"""What every command shares: the ``--url``/``--json`` options, opening the app, output.

Commands talk to a ``Conveyor`` only (never to a backend), print data with rich
unless ``--json`` asks for the HTTP API's JSON, and report problems by raising
``ConveyorError``; ``cli.main`` turns those into one line and an exit code.
"""

import importlib
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, Protocol

import typer
from pydantic import BaseModel
from rich.console import Console

from conveyor.app import Conveyor
from conveyor.backends.base import TaskFilter
from conveyor.cli.render import tasks_table
from conveyor.config import load_settings
from conveyor.errors import ConveyorError, InvalidInput
from conveyor.models import QUEUE_PATTERN, Page, QueueInfo, Stats, Task, WorkerInfo
from conveyor.states import State
from conveyor.task import SubmitOptions

UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Backend URL. Default: $CONVEYOR_URL, then conveyor.yaml, then sqlite:///conveyor.db.",
        show_default=False,
    ),
]
ApiOpt = Annotated[
    str | None,
    typer.Option(
        "--api",
        envvar="CONVEYOR_API",
        help="Talk to a Conveyor HTTP API at this base URL instead of the backend ($CONVEYOR_API).",
        show_default=False,
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token", envvar="CONVEYOR_TOKEN", help="Bearer token for --api ($CONVEYOR_TOKEN).", show_default=False
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON, the same objects the HTTP API returns.")]
LogFormatOpt = Annotated[
    str | None,
    typer.Option(
        "--log-format",
        help="json or console (default: json unless stderr is a terminal).",
        show_default=False,
    ),
]
LogLevelOpt = Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")]


def start_logging(fmt: str | None, level: str) -> None:
    """Validate ``--log-format``/``--log-level`` and install the one logging setup."""
    from conveyor.logs import FORMATS, setup_logging

    if fmt is not None and fmt not in FORMATS:
        raise InvalidInput(f"--log-format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if level.lower() not in ("debug", "info", "warning", "error"):
        raise InvalidInput(f"--log-level must be debug, info, warning or error, got {level!r}")
    setup_logging("json" if fmt == "json" else "console" if fmt else None, level)


out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


@contextmanager
def connect(url: str | None, *, auto_migrate: bool | None = None) -> Iterator[Conveyor]:
    """A client app on ``url`` (or the configured one), closed when the command ends."""
    app = Conveyor(settings=load_settings(url=url, auto_migrate=auto_migrate))
    try:
        yield app
    finally:
        app.close()


class Submitted(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def created(self) -> bool: ...


class Operations(Protocol):
    """What task and operator commands call: a local ``Conveyor`` or ``conveyor.client.Client``."""

    def submit(self, name: str, args: dict[str, Any] | None = None, opts: SubmitOptions | None = None) -> Submitted: ...
    def get(self, task_id: str) -> Task: ...
    def list_tasks(self, flt: TaskFilter | None = None, limit: int = 50, cursor: str | None = None) -> Page: ...
    def cancel(self, task_id: str) -> Task: ...
    def retry(self, task_id: str) -> Task: ...
    def stats(self) -> Stats: ...
    def workers(self) -> list[WorkerInfo]: ...
    def queues(self) -> list[QueueInfo]: ...
    def dlq_replay(self, flt: TaskFilter | None = None) -> int: ...
    def dlq_purge(self, flt: TaskFilter | None = None) -> int: ...
    def close(self) -> None: ...


@contextmanager
def open_client(url: str | None, api: str | None = None, token: str | None = None) -> Iterator[Operations]:
    """The HTTP client when ``--api`` (or ``$CONVEYOR_API``) is given, else the app on ``url``."""
    if api and url:
        raise InvalidInput("give either --url (a backend) or --api (an HTTP API), not both")
    client: Operations
    if api:
        from conveyor.client import Client

        client = Client(api, token)
    else:
        client = Conveyor(settings=load_settings(url=url))
    try:
        yield client
    finally:
        client.close()


def print_json(data: Any) -> None:
    """Write ``data`` (models, lists of models, plain JSON) to stdout as JSON."""
    sys.stdout.write(json.dumps(to_jsonable(data), indent=2) + "\n")


def print_page(page: Page, as_json: bool, noun: str, *, dlq: bool = False) -> None:
    """A page of tasks as JSON (cursor on stderr) or as a table (cursor hint after it)."""
    if as_json:
        print_json(page.items)
        if page.next_cursor:
            err.print(f"next cursor: {page.next_cursor}")
        return
    if not page.items:
        out.print(f"no {noun} match")
        return
    out.print(tasks_table(page.items, title=f"{len(page.items)} {noun}", dlq=dlq, width=out.width))
    if page.next_cursor:
        out.print(f"more: --cursor {page.next_cursor}")


def to_jsonable(data: Any) -> Any:
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if isinstance(data, list | tuple):
        return [to_jsonable(item) for item in data]
    return data


def parse_state(value: str | None) -> State | None:
    """A ``--state`` value, refused with the list of valid names when unknown."""
    if value is None:
        return None
    try:
        return State(value.strip().lower())
    except ValueError:
        valid = ", ".join(s.value for s in State)
        raise InvalidInput(f"invalid state {value!r}: expected one of {valid}") from None


def parse_queue(value: str | None) -> str | None:
    """A ``--queue`` value; the same name rule as on submit."""
    if value is not None and not re.fullmatch(QUEUE_PATTERN.strip("^$"), value):
        raise InvalidInput(f"invalid queue name {value!r}: use 1-100 letters, digits, '_', '.', ':' or '-'")
    return value


def split_csv(values: Sequence[str] | None) -> list[str]:
    """``--queues a,b --queues c`` -> ``["a", "b", "c"]``."""
    return [part.strip() for value in values or () for part in value.split(",") if part.strip()]


def load_app(path: str, url: str | None = None) -> Conveyor:
    """Import the ``Conveyor`` object at ``MODULE:ATTR``; point it at ``url`` if given.

    The current directory is importable, as with ``celery -A`` and ``uvicorn``.
    ``CONVEYOR_URL`` is set before the import so an app built with ``Conveyor()``
    and any worker child process see the same URL.
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise InvalidInput(f"invalid app path {path!r}: expected MODULE:ATTR, e.g. myproj.tasks:app")
    if not all(part.isidentifier() for part in module_name.split(".")):  # no file paths, no relative imports
        raise InvalidInput(f"invalid app path {path!r}: {module_name!r} is not a dotted module name, e.g. myproj.tasks")
    if url is not None:
        os.environ["CONVEYOR_URL"] = url
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = _import(module_name)
    app = getattr(module, attr, None)
    if app is None:
        raise InvalidInput(f"module {module_name!r} has no attribute {attr!r}")
    if not isinstance(app, Conveyor):
        raise InvalidInput(f"{path} is not a Conveyor app (got {type(app).__name__})")
    if url is not None and app.url != url:
        # The app was built with an explicit URL; --url overrides it before any use.
        app.settings = app.settings.model_copy(update={"url": url})
        app.url = url
    return app


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise InvalidInput(f"cannot import module {module_name!r}: no such module") from exc
        raise ConveyorError(f"importing {module_name!r} failed: {exc}") from exc
    except ConveyorError:
        raise
    except Exception as exc:
        raise ConveyorError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
