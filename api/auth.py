"""Who may do what: roles, zones, password hashes and login tokens.

Roles are ordered: a viewer only reads; an operator acts (acknowledge, command bollards) in
the zones granted to them; a supervisor also approves what needs two people and takes
alerts out of service; an admin also manages users. Passwords are hashed with Argon2id
(argon2-cffi). Tokens are short-lived signed JWTs that name the user and the version of
their password; the user's role and zones are read from the store on every request, so a
changed role, a disabled user or a new password take effect at once.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

ALL_ZONES = "*"
ISSUER = "facility-api"


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    SUPERVISOR = "supervisor"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def at_least(self, other: Role) -> bool:
        return self.rank >= other.rank


_RANK = {Role.VIEWER: 1, Role.OPERATOR: 2, Role.SUPERVISOR: 3, Role.ADMIN: 4}


@dataclass(frozen=True)
class User:
    username: str
    role: Role
    zones: tuple[str, ...]
    display_name: str = ""
    disabled: bool = False
    password_version: int = 1

    def in_zone(self, zone: str) -> bool:
        return ALL_ZONES in self.zones or zone in self.zones

    def in_zones(self, zones: Iterable[str]) -> bool:
        return all(self.in_zone(z) for z in zones)


class Passwords:
    """Argon2id hashing, off the event loop (a hash takes tens of milliseconds)."""

    def __init__(self, min_length: int) -> None:
        self.min_length = min_length
        self.hasher = PasswordHasher()
        # Verifying against this when the user does not exist keeps the timing the same.
        self._decoy = self.hasher.hash(secrets.token_urlsafe(16))

    def check_policy(self, password: str) -> None:
        # Length is what makes a password strong (NIST SP 800-63B); any character goes.
        if len(password) < self.min_length:
            raise ValueError(f"a password needs at least {self.min_length} characters")

    async def hash(self, password: str) -> str:
        self.check_policy(password)
        return await asyncio.to_thread(self.hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        def check() -> bool:
            try:
                return self.hasher.verify(stored or self._decoy, password) and stored is not None
            except (VerificationError, InvalidHashError):
                return False

        return await asyncio.to_thread(check)


@dataclass(frozen=True)
class TokenClaims:
    username: str
    password_version: int
    expires_at: float
    token_id: str


class TokenError(Exception):
    """A token that is missing, malformed, forged or expired."""


@dataclass
class Tokens:
    secret: str
    lifetime: float
    audience: str  # the site id: a token of one site is no good at another
    algorithm: str = field(default="HS256", init=False)

    def issue(self, user: User, now: float | None = None) -> tuple[str, float]:
        now = time.time() if now is None else now
        expires = now + self.lifetime
        claims = {"sub": user.username, "pwv": user.password_version, "iat": int(now),
                  "exp": int(expires), "iss": ISSUER, "aud": self.audience,
                  "jti": uuid.uuid4().hex}
        return jwt.encode(claims, self.secret, algorithm=self.algorithm), float(int(expires))

    def read(self, token: str) -> TokenClaims:
        try:
            data = jwt.decode(token, self.secret, algorithms=[self.algorithm], issuer=ISSUER,
                              audience=self.audience,
                              options={"require": ["sub", "exp", "iat", "pwv"]})
        except jwt.ExpiredSignatureError:
            raise TokenError("the token has expired; log in again") from None
        except jwt.PyJWTError:
            raise TokenError("the token is not valid") from None
        return TokenClaims(str(data["sub"]), int(data["pwv"]), float(data["exp"]),
                           str(data.get("jti", "")))


@dataclass
class LoginThrottle:
    """Locks a username out for a while after repeated failed logins (per API process)."""

    attempts: int
    lockout: float
    _failures: dict[str, list[float]] = field(default_factory=dict)

    def locked_for(self, username: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        recent = [t for t in self._failures.get(username, []) if now - t < self.lockout]
        if len(recent) >= self.attempts:
            return self.lockout - (now - recent[-self.attempts])
        return 0.0

    def failed(self, username: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        recent = [t for t in self._failures.get(username, []) if now - t < self.lockout]
        self._failures[username] = [*recent, now][-self.attempts:]
        if len(self._failures) > 10_000:  # bounded: forget the oldest usernames
            for name in list(self._failures)[:1000]:
                del self._failures[name]

    def succeeded(self, username: str) -> None:
        self._failures.pop(username, None)
