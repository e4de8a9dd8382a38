"""Logging in, tokens, and who may command what: the role and zone matrix, checked on the
broker (a refused command publishes nothing), and fields a client may not set."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest

from api.auth import Role, Tokens, User
from facility import messages as m
from facility import topics
from facility.settings import Settings
from tests.helpers import Collector
from tests.test_api_stack import PASSWORD, api_stack


async def test_login_tokens_and_lockout(settings: Settings, tmp_path: Path) -> None:
    async with api_stack(settings, tmp_path, login_attempts=3, login_lockout=600) as s:
        me = await s.get("/api/me", "otto")
        assert me.status_code == 200
        assert me.json() == {"username": "otto", "role": "operator",
                             "zones": ["parking", "south-gate"], "display_name": "otto",
                             "disabled": False}
        assert (await s.http.get("/api/me")).status_code == 401
        forged = jwt.encode({"sub": "ada", "pwv": 1, "exp": 2**40, "iat": 1},
                            "not the key of this site, 32+ bytes long", algorithm="HS256")
        for token in ("garbage", forged):
            reply = await s.http.get("/api/me", headers={"Authorization": f"Bearer {token}"})
            assert reply.status_code == 401 and reply.headers["www-authenticate"] == "Bearer"
        # A token past its lifetime, signed with the right key, is refused too.
        tokens: Tokens = s.api.app.state.ctx.tokens
        old, _ = tokens.issue(User("ada", Role.ADMIN, ("*",)), now=time.time() - 10 * 3600)
        reply = await s.http.get("/api/me", headers={"Authorization": f"Bearer {old}"})
        assert reply.status_code == 401 and "expired" in reply.json()["detail"]
        # Another site's token is no good here (audience).
        other = Tokens(tokens.secret, 3600, "another-site").issue(
            User("ada", Role.ADMIN, ("*",)))[0]
        reply = await s.http.get("/api/me", headers={"Authorization": f"Bearer {other}"})
        assert reply.status_code == 401

        # Wrong passwords: 401, and after three the user is locked out (429).
        for _ in range(3):
            assert (await s.login("vera", "wrong password!")).status_code == 401
        assert (await s.login("nobody-here", PASSWORD)).status_code == 401
        locked = await s.login("vera", PASSWORD)
        assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
        assert (await s.login("sam")).status_code == 200  # others are not locked out

        # A new password ends the old logins; the user's role cannot be changed on the way.
        change = await s.post("/api/me/password", "otto",
                              {"current_password": PASSWORD, "new_password": "new secret 123",
                               "role": "admin", "zones": ["*"]})
        assert change.status_code == 204
        assert (await s.get("/api/me", "otto")).status_code == 401
        relogin = await s.login("otto", "new secret 123")
        assert relogin.status_code == 200
        assert relogin.json()["user"]["role"] == "operator"
        assert relogin.json()["user"]["zones"] == ["parking", "south-gate"]

        # A disabled user is out at once, even with a token that has not expired.
        disable = await s.http.patch("/api/users/sue", headers=s.auth("ada"),
                                     json={"disabled": True})
        assert disable.status_code == 200
        assert (await s.get("/api/me", "sue")).status_code == 401
        assert (await s.http.patch("/api/users/sue", headers=s.auth("sam"),
                                   json={"disabled": False})).status_code == 403
        # The last admin cannot be demoted.
        demote = await s.http.patch("/api/users/ada", headers=s.auth("ada"),
                                    json={"role": "viewer"})
        assert demote.status_code == 409


async def test_users_are_managed_by_admins_only(settings: Settings, tmp_path: Path) -> None:
    async with api_stack(settings, tmp_path) as s:
        new = {"username": "liu", "password": "值班员密码 2026", "role": "operator",
               "zones": ["south-gate"], "display_name": "值班员 刘",
               "created_by": "mallory", "password_version": 99, "disabled": True}
        for who in ("vera", "otto", "sam"):
            assert (await s.post("/api/users", who, new)).status_code == 403
        added = await s.post("/api/users", "ada", new)
        assert added.status_code == 201, added.text
        assert added.json() == {"username": "liu", "role": "operator", "zones": ["south-gate"],
                                "display_name": "值班员 刘", "disabled": False}
        assert (await s.post("/api/users", "ada", new)).status_code == 409
        weak = await s.post("/api/users", "ada", {**new, "username": "wu", "password": "123"})
        assert weak.status_code == 422 and "at least 10" in weak.text
        moon = await s.post("/api/users", "ada", {**new, "username": "wu", "zones": ["moon"]})
        assert moon.status_code == 404 and "no zone moon" in moon.json()["detail"]
        login = await s.login("liu", "值班员密码 2026")
        assert login.status_code == 200 and login.json()["user"]["disabled"] is False
        listed = await s.get("/api/users", "ada")
        assert [u["username"] for u in listed.json()] == \
            ["ada", "liu", "olga", "otto", "sam", "sue", "vera"]
        stored = await s.store.password_hash("liu")
        assert stored is not None and stored.startswith("$argon2id$")


async def test_role_and_zone_matrix(settings: Settings, tmp_path: Path, state_url: str) -> None:
    """Who may command what, with nothing on the broker for a refused command, every
    attempt in the audit log, and the issuer always the logged-in user."""
    async with api_stack(settings, tmp_path, state_url=state_url) as s:
        commands = topics.subscription(topics.Kind.COMMAND, s.site_id, "bollard")
        async with Collector(settings.mqtt, commands) as published:
            refused = [
                ("vera", "raise", ["bollard-s01"]),  # a viewer commands nothing
                ("vera", "emergency_rise", []),
                ("olga", "raise", ["bollard-s01"]),  # an operator of another zone
                ("olga", "emergency_rise", []),
                ("otto", "lower_all", []),  # lowering everything: supervisors only
                ("otto", "lower", [f"bollard-s{n:02d}" for n in range(1, 8)]),  # 7 > 6
            ]
            for who, action, bollards in refused:
                reply = await s.command(who, action, bollards=bollards)
                assert reply.status_code == 403, (who, action, reply.text)
            anonymous = await s.http.post("/api/commands", json={
                "id": "anon-1", "action": "emergency_rise", "reason": "匿名"})
            assert anonymous.status_code == 401
            for path in ("approve", "reject"):
                assert (await s.post(f"/api/commands/anything/{path}", "vera")).status_code \
                    == 404
            await s.nothing_published(published)

        audit = (await s.get("/api/audit", "sam", limit=100)).json()
        refusals = [(a["username"], a["action"]) for a in audit if a["event"] == "refused"]
        assert sorted(refusals) == sorted((w, a) for w, a, _ in refused)
        assert all(a["outcome"] == "refused" and a["reason"] == "演练 drill"
                   for a in audit if a["event"] == "refused")
        assert (await s.get("/api/audit", "otto")).status_code == 403  # supervisors read it

        async with Collector(settings.mqtt, commands) as published:
            allowed = await s.command("otto", "raise", bollards=["bollard-s01", "bollard-s02"],
                                      command_id="otto-raise-1", issued_by="mallory",
                                      approved_by="sam", status="done")
            assert allowed.status_code == 202, allowed.text
            view = allowed.json()
            assert view["requested_by"] == "otto" and view["status"] == "sent"
            assert view["approval"]["required"] is False
            await published.wait_for(2)
            sent = sorted(published.decoded(m.Command), key=lambda c: c.device)
        assert [(c.id, c.device, c.action) for c in sent] == [
            ("otto-raise-1.bollard-s01", "bollard-s01", "raise"),
            ("otto-raise-1.bollard-s02", "bollard-s02", "raise")]
        assert all(c.issued_by == "otto" and c.approved_by == "" and c.reason == "演练 drill"
                   and c.expires_at - c.issued_at == 30 * 10**9 for c in sent)


async def test_audit_log_is_append_only(settings: Settings, tmp_path: Path,
                                        state_url: str) -> None:
    import sqlalchemy as sa
    from sqlalchemy.exc import DBAPIError

    from audit.log import audit_t

    async with api_stack(settings, tmp_path, state_url=state_url) as s:
        assert (await s.command("vera", "raise", bollards=["bollard-s03"])).status_code == 403
        for statement in (audit_t.update().values(outcome="done"), audit_t.delete()):
            with pytest.raises(DBAPIError, match="append-only"):
                async with s.store.db.begin() as conn:
                    await conn.execute(statement)
        async with s.store.db.connect() as conn:
            rows = (await conn.execute(sa.select(audit_t.c.outcome))).scalars().all()
        assert rows == ["refused"]
