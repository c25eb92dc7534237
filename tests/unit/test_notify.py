"""Notifications without a server: what ``verify`` accepts and refuses, and target names."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from conveyor.notify import sign, verify

SECRET = "s3cret-s3cret-s3cret"
BODY = b'{"event":"task.succeeded","id":"00000000000000000001"}'


def test_a_fresh_signature_verifies() -> None:
    assert verify(SECRET, BODY, sign(SECRET, BODY))


def test_another_body_secret_or_digest_fails() -> None:
    header = sign(SECRET, BODY)
    assert not verify(SECRET, BODY + b" ", header)
    assert not verify("another-secret-value", BODY, header)
    assert not verify(SECRET, BODY, header[:-1] + ("0" if header[-1] != "0" else "1"))


def test_an_old_or_future_timestamp_fails_even_if_the_digest_is_right() -> None:
    now = time.time()
    assert not verify(SECRET, BODY, sign(SECRET, BODY, int(now) - 301), now=now)
    assert not verify(SECRET, BODY, sign(SECRET, BODY, int(now) + 301), now=now)
    assert verify(SECRET, BODY, sign(SECRET, BODY, int(now) - 100), now=now)


def test_moving_the_timestamp_breaks_the_digest() -> None:
    ts = int(time.time())
    digest = sign(SECRET, BODY, ts).split("v1=")[1]
    assert not verify(SECRET, BODY, f"t={ts - 1},v1={digest}")


@given(st.text(max_size=200))
def test_garbage_headers_never_verify(header: str) -> None:
    assert not verify(SECRET, BODY, header)


def test_targets_with_the_same_name_are_refused_by_the_config() -> None:
    import pytest
    from pydantic import ValidationError

    from conveyor.config import NotificationsConfig

    hook = {"url": "http://h/x", "secret": "s" * 16, "events": ["task.succeeded"]}
    with pytest.raises(ValidationError, match="distinct names"):
        NotificationsConfig.model_validate({"webhooks": [hook, hook]})
    both = NotificationsConfig.model_validate({"webhooks": [hook, {**hook, "name": "second"}]})
    assert both.events() == frozenset({"task.succeeded"})


@pytest.mark.parametrize("url", ["http://", "http://[::1", "http://h:0/x", "http://h:99999/x"])
def test_a_webhook_url_no_delivery_could_use_is_a_config_error(url: str) -> None:
    from conveyor.config import NotificationsConfig

    with pytest.raises(ValidationError, match="invalid webhook URL"):
        NotificationsConfig.model_validate({"webhooks": [{"url": url, "secret": "s" * 16, "events": ["task.failed"]}]})


@pytest.mark.parametrize("field", ["lease_seconds", "backoff", "backoff_max"])
def test_an_endless_delay_is_a_config_error_not_a_parked_event(field: str) -> None:
    from conveyor.config import NotificationsConfig

    with pytest.raises(ValidationError, match="finite number"):
        NotificationsConfig.model_validate({field: float("inf")})


def test_the_config_knows_exactly_the_engines_events() -> None:
    from typing import get_args

    from conveyor.backends.base import OUTBOX_EVENTS
    from conveyor.config import NotifyEvent

    assert set(get_args(NotifyEvent)) == set(OUTBOX_EVENTS)
