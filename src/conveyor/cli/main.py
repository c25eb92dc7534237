"""The ``conveyor`` entry point: builds the command tree and owns exit codes.

Every failure ends as one line, ``error: <message>``, on stderr: ``ConveyorError``
exits with its ``exit_code`` (1 operational, 2 bad input), usage and validation
errors with 2, Ctrl-C with 130. A traceback is shown only when ``CONVEYOR_DEBUG`` is set.
"""

import os
import sys
from collections.abc import Sequence

import typer
from pydantic import ValidationError

from conveyor import __version__
from conveyor.app import describe_validation
from conveyor.cli import api, backup, cron, flow, ops, run, tasks
from conveyor.cli.common import err
from conveyor.errors import ConveyorError

cli = typer.Typer(
    name="conveyor",
    help="Conveyor: a distributed task queue. Submit, run, watch and steer tasks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
tasks.register(cli)
ops.register(cli)
run.register(cli)
cron.register(cli)
api.register(cli)
flow.register(cli)
backup.register(cli)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"conveyor {__version__}")
        raise typer.Exit()


@cli.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Conveyor: a distributed task queue. Submit, run, watch and steer tasks."""


def fail(message: str, code: int) -> int:
    """Print one ``error:`` line (markup off: messages quote user input) and return ``code``."""
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    err.print(f"error: {first}", markup=False, soft_wrap=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script passes it to ``sys.exit``)."""
    try:
        result = cli(args=list(argv) if argv is not None else None, prog_name="conveyor", standalone_mode=False)
    except ConveyorError as exc:
        return _debug(exc) or fail(exc.message, exc.exit_code)
    except ValidationError as exc:
        return _debug(exc) or fail(describe_validation(exc), 2)
    except typer.Abort:
        return fail("aborted", 130)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except typer.TyperException as exc:  # click's usage errors: bad option, missing argument...
        return _usage(exc)
    except BrokenPipeError:
        return 1
    except Exception as exc:  # a bug or an unexpected environment problem: still one line
        return _debug(exc) or fail(f"unexpected {type(exc).__name__}: {exc} (set CONVEYOR_DEBUG=1 for details)", 1)
    return result if isinstance(result, int) else 0


def _usage(exc: typer.TyperException) -> int:
    if type(exc).__name__ == "NoArgsIsHelpError":  # bare `conveyor` or `conveyor dlq`: show help
        sys.stderr.write(exc.format_message() + "\n")
        return 2
    return fail(f"{exc.format_message()} (see --help)", int(getattr(exc, "exit_code", 2)))


def _debug(exc: BaseException) -> int:
    """With ``CONVEYOR_DEBUG`` set, re-raise so the traceback shows; otherwise 0."""
    if os.environ.get("CONVEYOR_DEBUG"):
        raise exc
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
