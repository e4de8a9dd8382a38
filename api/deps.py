"""Request dependencies: the app's Context, the logged-in user, role checks, times."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.auth import Role, TokenError, User
from api.context import Context
from api.models import Problem

bearer = HTTPBearer(auto_error=False, description="the access_token from POST /api/auth/login")

MIN_TIME = datetime(2000, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(2200, 1, 1, tzinfo=UTC)


async def context(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


Ctx = Annotated[Context, Depends(context)]


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


async def current_user(ctx: Ctx, credentials: Annotated[
        HTTPAuthorizationCredentials | None, Depends(bearer)]) -> User:
    if credentials is None:
        raise unauthorized("log in first (Authorization: Bearer <token>)")
    try:
        claims = ctx.tokens.read(credentials.credentials)
    except TokenError as exc:
        raise unauthorized(str(exc)) from None
    user = await ctx.store.user(claims.username)
    if user is None or user.disabled:
        raise unauthorized("this user may not log in")
    if user.password_version != claims.password_version:
        raise unauthorized("the password changed since this login; log in again")
    return user


CurrentUser = Annotated[User, Depends(current_user)]


def role(least: Role) -> Callable[[User], Awaitable[User]]:
    async def check(user: CurrentUser) -> User:
        if not user.role.at_least(least):
            raise HTTPException(403, f"this needs the {least.value} role "
                                     f"(you are {user.role.value})")
        return user

    return check


Operator = Annotated[User, Depends(role(Role.OPERATOR))]
Supervisor = Annotated[User, Depends(role(Role.SUPERVISOR))]
Admin = Annotated[User, Depends(role(Role.ADMIN))]


def to_ns(value: datetime | None, default: int | None = None) -> int | None:
    """A query-string time as ns since the epoch; naive times are UTC."""
    if value is None:
        return default
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    if not MIN_TIME <= value <= MAX_TIME:
        raise HTTPException(422, f"time {value.isoformat()} is not between 2000 and 2200")
    return int(value.timestamp() * 1_000_000) * 1000


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route can give."""
    words = {400: "Bad request", 401: "Not logged in, or the token is not valid",
             403: "Not allowed for this user (role or zone)", 404: "Not found",
             409: "Conflicts with the current state", 429: "Too many failed logins",
             503: "A dependency (broker, state store, audit log, InfluxDB) is not available",
             504: "The rules engine did not answer in time"}
    return {code: {"model": Problem, "description": words[code]} for code in codes}
