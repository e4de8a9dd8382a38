"""Request dependencies: the app's Context, the logged-in user, role checks, times."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, get_args, get_origin

from fastapi import Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BeforeValidator

from api.auth import Role, TokenError, User
from api.context import Context
from api.models import Problem
from facility.messages import Family
from facility.site import SiteConfig

bearer = HTTPBearer(auto_error=False, description="the access_token from POST /api/auth/login")

MIN_TIME = datetime(2000, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(2200, 1, 1, tzinfo=UTC)


# In the description only where the API serves several sites, with their ids; an API of
# one site describes no `site`, as before there were sites (api/app.py _described).
SiteQuery = Annotated[str | None, Query(
    description="the site, where the API serves several (GET /api/sites); default: the "
                "first of them")]


async def context(request: Request, site: SiteQuery = None) -> Context:
    """The Context of the site the request names (`?site=`), else of the API's first site.
    An API serving one site has one Context, as before."""
    return _site_context(request, site)


def site_contexts(app: Any) -> dict[str, Context]:
    """The contexts of the sites this API serves, by site id, its first site first."""
    contexts: dict[str, Context] = app.state.sites
    return contexts


def _site_context(request: Request, site: str | None) -> Context:
    ctx: Context = request.app.state.ctx
    if site is None or site == ctx.site_id:
        return ctx
    chosen: Context | None = getattr(request.app.state, "sites", {}).get(site)
    if chosen is None:
        raise RequestValidationError([{"type": "enum", "loc": ("query", "site"),
                                       "msg": "this API does not serve that site",
                                       "input": site}])
    return chosen


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


def _iso_only(value: object) -> object:
    # Pydantic would also take a bare number as Unix time; the API promises ISO 8601.
    if isinstance(value, str) and not ISO_TIME.match(value):
        raise ValueError("not an ISO 8601 date-time (e.g. 2026-11-28T08:30:00+08:00)")
    return value


ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
IsoTime = Annotated[datetime, BeforeValidator(_iso_only)]
# Query parameters that name things of the site: checked against the site file.
SITE_NAMES = {"zone": "zones", "place": "places", "family": "families"}


async def known_query(request: Request) -> None:
    """Refuse unknown query parameters (a misspelt filter must not silently show
    everything), and zone, place or family values this site does not have."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    declared = _query_params(route.dependant)
    errors: list[dict[str, Any]] = []
    ctx: Context | None = getattr(request.app.state, "ctx", None)
    if ctx is not None and "site" in declared:  # zones, places: the chosen site's
        ctx = _site_context(request, request.query_params.get("site"))
    seen: set[str] = set()
    for name, value in request.query_params.multi_items():
        if name not in declared:
            errors.append({"type": "extra_forbidden", "loc": ("query", name),
                           "msg": "unknown query parameter", "input": value})
        elif name in seen and not declared[name]:
            errors.append({"type": "too_long", "loc": ("query", name),
                           "msg": "given more than once; it takes one value", "input": value})
        elif name in SITE_NAMES and ctx is not None and value not in site_names(ctx.site, name):
            errors.append({"type": "enum", "loc": ("query", name),
                           "msg": f"no such {name} at this site", "input": value})
        seen.add(name)
    if errors:
        raise RequestValidationError(errors)


def _query_params(dependant: Any) -> dict[str, bool]:
    """The query parameters a route and its dependencies declare, and whether each takes
    several values (a list)."""
    found = {field.alias: _is_list(field.field_info.annotation)
             for field in dependant.query_params}
    for sub in dependant.dependencies:
        found.update(_query_params(sub))
    return found


def _is_list(annotation: Any) -> bool:
    if get_origin(annotation) in (list, set, tuple):
        return True
    return any(_is_list(arg) for arg in get_args(annotation) if arg is not type(None))


def site_names(site: SiteConfig, kind: str) -> list[str]:
    """The ids a zone, place or family query parameter may take at this site."""
    if kind == "zone":
        return [z.id for z in site.zones]
    if kind == "place":
        return [p.id for p in site.places]
    return [f.value for f in Family if f is not Family.GATEWAY]


def to_ns(value: datetime | None, default: int | None = None) -> int | None:
    """A query-string time as ns since the epoch; naive times are UTC. Times before 2000
    or after 2200 are taken as those bounds (no data lies outside them)."""
    if value is None:
        return default
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = min(max(value, MIN_TIME), MAX_TIME)
    return int(value.timestamp() * 1_000_000) * 1000


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route can give."""
    words = {400: "Bad request", 401: "Not logged in, or the token is not valid",
             403: "Not allowed for this user (role or zone)", 404: "Not found",
             409: "Conflicts with the current state", 429: "Too many failed logins",
             503: "A dependency (broker, state store, audit log, InfluxDB) is not available",
             504: "The rules engine did not answer in time"}
    return {code: {"model": Problem, "description": words[code]} for code in codes}
