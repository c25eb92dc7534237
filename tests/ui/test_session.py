"""The session cookie and CSRF tokens on their own: signing, expiry, revocation, shared secrets."""

from __future__ import annotations

import httpx
import pytest

from conveyor.api.auth import Guard, hash_token
from conveyor.config import ApiConfig, ApiToken
from conveyor.ui.session import MAX_AGE, SECRET_ENV, Session, Sessions
from tests.api.conftest import AppFactory
from tests.ui.conftest import TOKENS, login


def guard(*roles: str) -> Guard:
    tokens = [ApiToken(name=f"{r}-token", role=r, sha256=hash_token(TOKENS[r])) for r in roles]  # type: ignore[arg-type]
    return Guard(ApiConfig(tokens=tokens))


def test_a_cookie_round_trips_and_any_change_voids_it() -> None:
    sessions = Sessions(b"k" * 32)
    session = sessions.new("admin-token", hash_token(TOKENS["admin"]))
    raw = sessions.dump(session)
    assert sessions.load(raw) == session
    assert TOKENS["admin"] not in raw and hash_token(TOKENS["admin"]) not in raw
    payload, _, mac = raw.rpartition(".")
    flipped = mac[:-1] + ("1" if mac[-1] == "0" else "0")
    for forged in [payload + "A." + mac, payload + "." + flipped, "x.y", "", "." * 5000]:
        assert sessions.load(forged) is None
    assert Sessions(b"other" * 8).load(raw) is None


def test_sessions_expire() -> None:
    sessions = Sessions(b"k" * 32)
    old = Session(sid="s", issued=1.0, name="admin-token", fingerprint="f")
    assert sessions.load(sessions.dump(old)) is None
    import time

    fresh = Session(sid="s", issued=round(time.time() - MAX_AGE + 60, 3), name=None, fingerprint=None)
    assert sessions.load(sessions.dump(fresh)) == fresh


def test_a_session_follows_its_token_in_the_config() -> None:
    sessions = Sessions(b"k" * 32)
    session = sessions.new("admin-token", hash_token(TOKENS["admin"]))
    caller = sessions.caller(guard("admin", "read"), session)
    assert caller is not None and caller.role == "admin"
    assert sessions.caller(guard("read"), session) is None  # the token was removed: the session ends
    renamed = Sessions(b"k" * 32).new("read-token", hash_token(TOKENS["admin"]))
    assert sessions.caller(guard("admin", "read"), renamed) is None  # a name must match its digest


def test_csrf_tokens_are_bound_to_one_session() -> None:
    sessions = Sessions(b"k" * 32)
    a, b = sessions.new(), sessions.new()
    assert sessions.csrf_ok(a, sessions.csrf(a))
    assert not sessions.csrf_ok(a, sessions.csrf(b)) and not sessions.csrf_ok(a, "") and not sessions.csrf_ok(a, None)


async def test_instances_sharing_the_secret_accept_each_others_sessions(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, "shared-between-instances")
    first, second = make_app(), make_app()
    async with first.router.lifespan_context(first), second.router.lifespan_context(second):
        a = httpx.AsyncClient(transport=httpx.ASGITransport(app=first), base_url="http://testserver")
        b = httpx.AsyncClient(transport=httpx.ASGITransport(app=second), base_url="http://testserver")
        async with a, b:
            await login(a, "read")
            b.cookies = a.cookies
            assert (await b.get("/ui/workers")).status_code == 200
    monkeypatch.delenv(SECRET_ENV)
    third = make_app()
    async with third.router.lifespan_context(third):
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=third), base_url="http://testserver", cookies=a.cookies)
        async with c:
            assert (await c.get("/ui/workers")).status_code == 303  # another secret: back to the login form
