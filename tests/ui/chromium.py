"""Debian's Chromium for the browser tests: found, or installed with apt-get, never downloaded.

Playwright's own ``playwright install`` would fetch a browser build from outside the
package registries; the tests use the distribution's package instead. Several test
processes (pytest-xdist) may ask at once: a file lock lets one of them install.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCK = Path("/tmp/conveyor-chromium-install.lock")


def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    try:
        return subprocess.run(["apt-get", *args], check=False, capture_output=True, text=True, timeout=400, env=env)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(["apt-get", *args], 1, "", "apt-get timed out after 400 s")


def find_chromium() -> tuple[str | None, str]:
    """The browser's path, or ``None`` and why it could not be had."""
    if CHROMIUM.exists():
        return str(CHROMIUM), ""
    if shutil.which("apt-get") is None:
        return None, "no apt-get on this machine"
    if os.geteuid() != 0:
        return None, "not root: run 'apt-get install -y chromium' once"
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be installing it right now
        if not CHROMIUM.exists():
            done = _apt("install", "-y", "-q", "chromium")
            if done.returncode != 0:  # an old or missing package list: update once, then retry
                _apt("update", "-q")
                done = _apt("install", "-y", "-q", "chromium")
            if done.returncode != 0:
                return None, f"apt-get install chromium failed: {done.stderr.strip()[-300:]}"
    return (str(CHROMIUM), "") if CHROMIUM.exists() else (None, "chromium installed but /usr/bin/chromium is missing")
