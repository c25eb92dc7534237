"""Fuzz every operation of ``/openapi.json`` against a real ``conveyor api`` process.

Bounded (a few examples per operation) so it fits in ``make test``: no response may
be a 5xx, and every response must match the documented status codes, content type
and schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from conveyor.api import create_app
from tests.api.conftest import auth
from tests.api.test_server import api_process

# The document served by every instance; built in-process so collection needs no server.
schema = schemathesis.openapi.from_dict(create_app("memory://").openapi())

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    with api_process(f"sqlite:///{tmp / 'fuzz.db'}", tmp) as base:
        yield base


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_openapi_document(case: schemathesis.Case, base_url: str) -> None:
    case.call_and_validate(base_url=base_url, headers=auth("admin"), checks=CHECKS, timeout=10)
