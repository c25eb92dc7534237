"""Bearer-token authentication, roles, and the per-token request rate limit.

Tokens are configured as SHA-256 hex digests (``conveyor api hash-token`` prints one),
so neither ``conveyor.yaml`` nor the environment holds a usable secret. Roles are
ordered ``read`` < ``submit`` < ``admin``; each route names the least role it needs.
With no token configured the API is open (every caller is ``admin``), and
``conveyor api`` then refuses to bind anything but loopback.

The rate limit is a token bucket per token *per API process*: behind a load balancer
with N instances a token may get up to N times the configured rate. That keeps the
API stateless; put a shared limit in the load balancer when it must be exact.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from conveyor.config import ApiConfig, ApiToken
from conveyor.errors import Forbidden, RateLimited, Unauthorized

Role = Literal["read", "submit", "admin"]
RANK: dict[str, int] = {"read": 0, "submit": 1, "admin": 2}


def hash_token(secret: str) -> str:
    """The digest to put in ``api.tokens[].sha256`` for ``secret``."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token() -> str:
    """A fresh random secret (URL-safe, 256 bits)."""
    return "cvy_" + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the token's name (``anonymous`` without auth) and role."""

    name: str
    role: str


class Bucket:
    """A token bucket: ``rate`` requests per second, bursts up to ``burst``."""

    __slots__ = ("burst", "level", "rate", "stamp")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.level = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> float:
        """0 when a request may pass, else the seconds until one may."""
        now = time.monotonic()
        self.level = min(self.burst, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.level >= 1:
            self.level -= 1
            return 0.0
        return (1 - self.level) / self.rate


class Guard:
    """Checks a request's bearer token and rate; built once per API app."""

    def __init__(self, config: ApiConfig) -> None:
        self.tokens: list[ApiToken] = list(config.tokens)
        self.rate, self.burst = config.rate_limit, config.rate_burst
        self.buckets: dict[str, Bucket] = {}

    @property
    def open(self) -> bool:
        return not self.tokens

    def identify(self, authorization: str | None) -> Caller:
        if self.open:
            return Caller("anonymous", "admin")
        if not authorization:
            raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
        scheme, _, secret = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthorized("malformed Authorization header: expected 'Bearer <token>'")
        digest = hash_token(secret.strip())
        for token in self.tokens:  # compare against every token: timing does not tell which matched
            if hmac.compare_digest(token.sha256, digest):
                return Caller(token.name, token.role)
        raise Unauthorized("invalid bearer token")

    def throttle(self, caller: Caller) -> None:
        if self.rate <= 0:
            return
        bucket = self.buckets.get(caller.name)
        if bucket is None:
            bucket = self.buckets[caller.name] = Bucket(self.rate, self.burst)
        wait = bucket.take()
        if wait:
            retry_after = max(1, math.ceil(wait))
            raise RateLimited(
                f"rate limit of {self.rate:g} requests/s for this token exceeded", retry_after=retry_after
            )


# Declares the scheme in the OpenAPI document; the check itself is ``Guard.identify``.
bearer = HTTPBearer(auto_error=False, description="An API token; see docs/api.md for roles.")


def require(role: Role) -> Callable[[Request], Awaitable[Caller]]:
    """A FastAPI dependency: authenticate, check the role, then count against the rate limit."""

    async def dependency(
        request: Request,
        _: HTTPAuthorizationCredentials | None = Security(bearer),  # noqa: B008
    ) -> Caller:
        guard: Guard = request.app.state.guard
        caller = guard.identify(request.headers.get("authorization"))
        if RANK[caller.role] < RANK[role]:
            raise Forbidden(f"token {caller.name!r} has role {caller.role!r}; this needs {role!r}", needs=role)
        guard.throttle(caller)
        return caller

    dependency.__name__ = f"require_{role}"
    return dependency
