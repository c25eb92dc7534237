"""How the CLI tests start ``conveyor``: the installed console script, else ``python -m conveyor``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

SCRIPT = Path(sys.executable).parent / "conveyor"
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "conveyor"]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the developer's ``CONVEYOR_*`` settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    return {**env, **extra}
