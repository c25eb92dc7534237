"""Write docs/api-reference.md from the API's OpenAPI document (``app.openapi()``).

.venv/bin/python scripts/gen_api_docs.py          # rewrite the file
.venv/bin/python scripts/gen_api_docs.py --check  # exit 1 if it is stale (tests run this)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from conveyor.api import create_app

TARGET = Path(__file__).resolve().parent.parent / "docs" / "api-reference.md"


def _schema_name(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return "`" + schema["$ref"].rsplit("/", 1)[-1] + "`"
    if schema.get("type") == "array":
        return f"list of {_schema_name(schema.get('items', {}))}"
    if "anyOf" in schema:
        return " or ".join(_schema_name(s) for s in schema["anyOf"])
    return f"`{schema.get('type', 'object')}`"


def render(spec: dict[str, Any]) -> str:
    lines = [
        "# HTTP API reference",
        "",
        "Generated from `/openapi.json` by `scripts/gen_api_docs.py`; do not edit by hand.",
        "See [api.md](api.md) for auth, errors and deployment.",
        "",
    ]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            lines += [f"## `{method.upper()} {path}`", "", op.get("summary", ""), ""]
            if op.get("description"):
                lines += [op["description"].strip(), ""]
            params = op.get("parameters", [])
            if params:
                lines += ["| parameter | in | type | required |", "|---|---|---|---|"]
                for p in params:
                    required = "yes" if p.get("required") else "no"
                    lines.append(f"| `{p['name']}` | {p['in']} | {_schema_name(p.get('schema', {}))} | {required} |")
                lines.append("")
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                lines += [f"Body: {_schema_name(body)}", ""]
            lines += ["| status | body |", "|---|---|"]
            for status, resp in sorted(op.get("responses", {}).items()):
                schema = resp.get("content", {}).get("application/json", {}).get("schema", {})
                lines.append(
                    f"| {status} | {_schema_name(schema) if schema else '-'} — {resp.get('description', '')} |"
                )
            lines.append("")
    lines += ["## Schemas", ""]
    for name, schema in spec.get("components", {}).get("schemas", {}).items():
        lines += [f"### `{name}`", "", schema.get("description", "").strip(), ""]
        props = schema.get("properties", {})
        if props:
            lines += ["| field | type |", "|---|---|"]
            lines += [f"| `{field}` | {_schema_name(sub)} |" for field, sub in props.items()]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    text = render(json.loads(json.dumps(create_app("memory://").openapi())))
    if "--check" in sys.argv:
        return 0 if TARGET.exists() and TARGET.read_text() == text else 1
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
