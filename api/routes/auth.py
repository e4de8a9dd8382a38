"""Logging in, the current user, and user administration (admin only)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, Request, Response

from api.auth import ALL_ZONES, Role, User
from api.deps import Admin, Ctx, CurrentUser, problems
from api.models import LoginRequest, LoginResponse, NewUser, PasswordChange, UserChange, UserView

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api", tags=["auth and users"])


def user_view(user: User) -> UserView:
    return UserView(username=user.username, role=user.role, zones=list(user.zones),
                    display_name=user.display_name, disabled=user.disabled)


@router.post("/auth/login", response_model=LoginResponse, responses=problems(401, 429),
             summary="Log in: a bearer token for the other routes")
async def login(body: LoginRequest, ctx: Ctx, request: Request) -> LoginResponse:
    locked = ctx.throttle.locked_for(body.username)
    if locked > 0:
        ctx.metrics.logins.labels("locked").inc()
        raise HTTPException(429, f"too many failed logins; try again in {locked:.0f}s",
                            headers={"Retry-After": str(int(locked) + 1)})
    stored = await ctx.store.password_hash(body.username)
    user = await ctx.store.user(body.username)
    ok = await ctx.passwords.verify(stored, body.password)
    if not ok or user is None or user.disabled:
        ctx.throttle.failed(body.username)
        ctx.metrics.logins.labels("failed").inc()
        client = request.client.host if request.client else "?"
        log.warning("failed login for %r from %s", body.username[:64], client)
        raise HTTPException(401, "wrong username or password",
                            headers={"WWW-Authenticate": "Bearer"})
    ctx.throttle.succeeded(body.username)
    ctx.metrics.logins.labels("ok").inc()
    token, expires = ctx.tokens.issue(user)
    log.info("%s logged in (%s)", user.username, user.role.value)
    return LoginResponse(access_token=token, expires_at=expires, user=user_view(user))


@router.get("/me", response_model=UserView, responses=problems(401),
            summary="The logged-in user")
async def me(user: CurrentUser) -> UserView:
    return user_view(user)


@router.post("/me/password", status_code=204, response_class=Response,
             responses=problems(400, 401), summary="Change your own password")
async def change_password(body: PasswordChange, user: CurrentUser, ctx: Ctx) -> Response:
    stored = await ctx.store.password_hash(user.username)
    if not await ctx.passwords.verify(stored, body.current_password):
        raise HTTPException(401, "the current password is wrong")
    try:
        hashed = await ctx.passwords.hash(body.new_password)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    await ctx.store.update_user(user.username, password_hash=hashed)
    log.info("%s changed their password", user.username)
    return Response(status_code=204)


@router.get("/users", response_model=list[UserView], responses=problems(401, 403),
            summary="Every user (admin)")
async def users(_: Admin, ctx: Ctx) -> list[UserView]:
    return [user_view(u) for u in await ctx.store.users()]


@router.post("/users", response_model=UserView, status_code=201,
             responses=problems(400, 401, 403, 404, 409), summary="Add a user (admin)")
async def add_user(body: NewUser, admin: Admin, ctx: Ctx) -> UserView:
    _check_zones(ctx, body.zones)
    try:
        hashed = await ctx.passwords.hash(body.password)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    user = User(username=body.username, role=body.role, zones=tuple(body.zones),
                display_name=body.display_name)
    if not await ctx.store.add_user(user, hashed, created_by=admin.username):
        raise HTTPException(409, f"user {body.username!r} exists")
    log.info("%s added user %s (%s, zones %s)", admin.username, user.username,
             user.role.value, ",".join(user.zones) or "-")
    return user_view(user)


@router.patch("/users/{username}", response_model=UserView,
              responses=problems(400, 401, 403, 404, 409),
              summary="Change a user's role, zones, name, password or disable them (admin)")
async def change_user(username: str, body: UserChange, admin: Admin, ctx: Ctx) -> UserView:
    target = await ctx.store.user(username)
    if target is None:
        raise HTTPException(404, f"no user {username!r}")
    if body.zones is not None:
        _check_zones(ctx, body.zones)
    demoted = (body.role is not None and body.role is not Role.ADMIN) or body.disabled
    if target.role is Role.ADMIN and not target.disabled and demoted \
            and await ctx.store.count_admins() <= 1:
        raise HTTPException(409, "this is the last admin; add another admin first")
    hashed = None
    if body.password is not None:
        try:
            hashed = await ctx.passwords.hash(body.password)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
    changed = await ctx.store.update_user(username, role=body.role, zones=body.zones,
                                          display_name=body.display_name,
                                          disabled=body.disabled, password_hash=hashed)
    if changed is None:
        raise HTTPException(404, f"no user {username!r}")
    log.info("%s changed user %s", admin.username, username)
    return user_view(changed)


def _check_zones(ctx: Ctx, zones: list[str]) -> None:
    known = set(ctx.topology.zones)
    unknown = [z for z in zones if z != ALL_ZONES and z not in known]
    if unknown:
        raise HTTPException(404, f"no zone {', '.join(unknown)} at this site "
                                 f"(zones: {', '.join(sorted(known))})")
