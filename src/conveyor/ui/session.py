"""Who is looking at the dashboard: the signed session cookie, CSRF tokens, roles.

The dashboard uses the API's tokens and roles (``conveyor.api.auth``). A browser
logs in once with a token; the cookie it gets back holds no token at all, only the
token's *name*, an HMAC fingerprint of its configured digest, a random session id
and the issue time, signed with HMAC-SHA256 under a server secret. Each request
looks the token up again by name and fingerprint, so removing a token from the
config ends its sessions, and a role change applies at once.

The secret is ``CONVEYOR_UI_SECRET`` when set (give every API instance behind one
load balancer the same value), else random per process: sessions then end when the
process restarts. CSRF tokens are bound to the session: ``HMAC(secret, "csrf:" + sid)``.
With no token configured (loopback-only mode) everyone is ``admin``, as in the API,
but a session cookie is still issued so that forms carry CSRF tokens.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from conveyor.api.auth import RANK, Caller, Guard

COOKIE = "conveyor_session"
MAX_AGE = 12 * 3600  # seconds a login lasts
SECRET_ENV = "CONVEYOR_UI_SECRET"


@dataclass(frozen=True, slots=True)
class Session:
    """The cookie's content: ``name`` and ``fingerprint`` are ``None`` before login."""

    sid: str
    issued: float
    name: str | None = None
    fingerprint: str | None = None


@dataclass(slots=True)
class Viewer:
    """The request's session and caller (``None``: not logged in); ``fresh`` sessions need a cookie."""

    session: Session
    caller: Caller | None
    csrf: str
    open: bool
    fresh: bool = False

    @property
    def admin(self) -> bool:
        return self.caller is not None and RANK[self.caller.role] >= RANK["admin"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Signs and checks session cookies and CSRF tokens under one server secret."""

    def __init__(self, secret: bytes | None = None) -> None:
        configured = os.environ.get(SECRET_ENV, "")
        self.secret = secret or (configured.encode() if configured else secrets.token_bytes(32))

    def _mac(self, *parts: str) -> str:
        return hmac.new(self.secret, "\x1f".join(parts).encode(), hashlib.sha256).hexdigest()

    def new(self, name: str | None = None, digest: str | None = None) -> Session:
        fingerprint = None if digest is None else self._mac("token", digest)[:32]
        return Session(sid=secrets.token_urlsafe(18), issued=round(time.time(), 3), name=name, fingerprint=fingerprint)

    def dump(self, session: Session) -> str:
        body = {"sid": session.sid, "iat": round(session.issued, 3), "n": session.name, "f": session.fingerprint}
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{payload}.{self._mac('session', payload)}"

    def load(self, raw: str | None) -> Session | None:
        """The session in a cookie value, or ``None`` when it is absent, forged, malformed or expired."""
        if not raw or len(raw) > 1024:
            return None
        payload, _, mac = raw.rpartition(".")
        if not payload or not hmac.compare_digest(mac, self._mac("session", payload)):
            return None
        try:
            body = json.loads(_unb64(payload))
            session = Session(sid=str(body["sid"]), issued=float(body["iat"]), name=body["n"], fingerprint=body["f"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        if not -60 <= time.time() - session.issued <= MAX_AGE:  # a minute of clock skew between instances
            return None
        return session

    def csrf(self, session: Session) -> str:
        return self._mac("csrf", session.sid)

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token), self.csrf(session))

    def caller(self, guard: Guard, session: Session) -> Caller | None:
        """The token behind a logged-in session, if it is still configured."""
        if guard.open:
            return Caller("anonymous", "admin")
        if session.name is None or session.fingerprint is None:
            return None
        found = None
        for token in guard.tokens:  # every token is compared: timing does not tell which matched
            mine = self._mac("token", token.sha256)[:32]
            if hmac.compare_digest(mine, session.fingerprint) and token.name == session.name:
                found = Caller(token.name, token.role)
        return found

    def set_cookie(self, request: Request, response: Response, session: Session) -> None:
        """``Secure`` when the request came over https (behind a proxy: ``X-Forwarded-Proto``, see docs)."""
        response.set_cookie(
            COOKIE,
            self.dump(session),
            max_age=MAX_AGE,
            path="/ui",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )


def sessions_of(request: Request) -> Sessions:
    """The app's ``Sessions``, made on first use (the API app factory knows nothing of the UI)."""
    state = request.app.state
    found: Sessions | None = getattr(state, "ui_sessions", None)
    if found is None:
        found = state.ui_sessions = Sessions()
    return found


def viewer_of(request: Request) -> Viewer:
    """Who asks: from the cookie when valid, else a fresh anonymous session (set on the response)."""
    sessions = sessions_of(request)
    guard: Guard = request.app.state.guard
    session = sessions.load(request.cookies.get(COOKIE))
    fresh = session is None
    if session is None:
        session = sessions.new()
    caller = sessions.caller(guard, session)
    return Viewer(session=session, caller=caller, csrf=sessions.csrf(session), open=guard.open, fresh=fresh)
