"""Session-wide: say loudly when a server engine's tests could not run."""

from __future__ import annotations

import pytest

from conveyor.backends import SCHEMES
from tests import services


def pytest_configure(config: pytest.Config) -> None:
    """Find (or start) the servers once up front, so a missing one is reported."""
    if "postgresql" in SCHEMES:
        services.postgres_url()
    if "redis" in SCHEMES:
        services.redis_url()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for engine, why in services.unavailable().items():
        terminalreporter.write_line(f"WARNING: {engine} tests were SKIPPED: {why}", red=True, bold=True)
