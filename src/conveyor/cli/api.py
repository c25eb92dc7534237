"""``conveyor api``: serve the HTTP API; ``conveyor api hash-token``: make a token entry."""

from __future__ import annotations

import ipaddress
import logging
import sys
from typing import Annotated

import typer

from conveyor.cli.common import LogFormatOpt, LogLevelOpt, UrlOpt, out, start_logging
from conveyor.config import load_settings
from conveyor.errors import InvalidInput

api = typer.Typer(help="Serve the HTTP API (see docs/api.md), or hash a token for it.")

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def register(cli: typer.Typer) -> None:
    cli.add_typer(api, name="api", rich_help_panel="Running")


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@api.callback(invoke_without_command=True)
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to bind; anything but loopback needs api.tokens.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=0, max=65535)] = 8000,
    url: UrlOpt = None,
    log_format: LogFormatOpt = None,
    log_level: LogLevelOpt = "info",
) -> None:
    """Serve the HTTP API until SIGTERM/SIGINT (``conveyor api hash-token`` makes tokens)."""
    if ctx.invoked_subcommand is not None:
        return
    settings = load_settings(url=url)
    if not settings.api.tokens and not is_loopback(host):
        raise InvalidInput(
            f"refusing to bind {host}: no API tokens are configured, so the API would be open to anyone; "
            "add api.tokens to conveyor.yaml (see `conveyor api hash-token`) or bind 127.0.0.1"
        )
    import uvicorn

    from conveyor.api import create_app

    start_logging(log_format, log_level)
    app = create_app(settings)
    auth = f"{len(settings.api.tokens)} token(s)" if settings.api.tokens else "no auth (loopback only)"
    logging.getLogger("conveyor.api").info(f"conveyor api on http://{host}:{port} backend={settings.url} auth={auth}")
    uvicorn.run(
        app,
        host=host,
        port=port,
        loop=_loop(),
        http="httptools",
        access_log=False,  # conveyor.api.access writes one JSON line per request instead
        log_config=None,
        log_level=log_level.lower(),
        server_header=False,
    )


def _loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


@api.command("hash-token")
def hash_token_cmd(
    secret: Annotated[
        str | None,
        typer.Argument(
            help="The token to hash; '-' reads it from stdin; none generates a new one.", show_default=False
        ),
    ] = None,
    name: Annotated[str, typer.Option(help="Name for the token entry.")] = "my-service",
    role: Annotated[str, typer.Option(help="read, submit or admin.")] = "submit",
) -> None:
    """Print the conveyor.yaml entry for a token (only its SHA-256 is stored)."""
    from conveyor.api.auth import hash_token, new_token

    if role not in ("read", "submit", "admin"):
        raise InvalidInput(f"invalid role {role!r}: expected read, submit or admin")
    generated = secret is None
    if secret == "-":
        secret = sys.stdin.readline().strip()
    if secret is None:
        secret = new_token()
    if not secret:
        raise InvalidInput("empty token")
    if generated:
        out.print(f"# token (give it to the client; it is not stored anywhere): {secret}", markup=False, soft_wrap=True)
    out.print(
        f"api:\n  tokens:\n    - name: {name}\n      role: {role}\n      sha256: {hash_token(secret)}", markup=False
    )
