"""The API reference is generated from the OpenAPI document and covers every path."""

from __future__ import annotations

import runpy
from pathlib import Path

from conveyor.api import create_app

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gen_api_docs.py"


def test_reference_renders_every_operation() -> None:
    render = runpy.run_path(str(SCRIPT))["render"]
    spec = create_app("memory://").openapi()
    text = render(spec)
    for path, ops in spec["paths"].items():
        for method in ops:
            assert f"## `{method.upper()} {path}`" in text
