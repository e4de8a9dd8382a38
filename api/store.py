"""The API's tables in the state store: users, and the append-only audit log (the
audit package; the API writes it, the shift report reads it too).

- api_users   one row per user: Argon2id hash, role, zones, disabled, password version
- api_audit   (audit/log.py) every attempt to command a bollard (allowed or refused), every approval
              decision and gateway result, every manual display or PA message; rows are
              only ever inserted. The database refuses UPDATE and DELETE (triggers), and a
              unique (command, once) key makes the steps that happen at most once per
              command (the request, the approval decision, each result) atomic claims.

A command's state is folded from its audit rows, so there is no second copy to disagree.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from api.auth import Role, User
from audit.log import AuditLog
from audit.log import install as install_audit
from audit.log import metadata as audit_metadata
from facility.db import open_store

metadata = sa.MetaData()
Ns = sa.BigInteger

users_t = sa.Table(
    "api_users", metadata,
    sa.Column("username", sa.String(64), primary_key=True),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("zones", sa.Text, nullable=False),  # JSON list; ["*"] for every zone
    sa.Column("display_name", sa.Text, nullable=False, default=""),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
    sa.Column("password_version", sa.Integer, nullable=False, default=1),
    sa.Column("created_at", Ns, nullable=False),
    sa.Column("created_by", sa.Text, nullable=False),
    sa.Column("updated_at", Ns, nullable=False),
)

def _user(r: Any) -> User:
    return User(username=r.username, role=Role(r.role), zones=tuple(json.loads(r.zones)),
                display_name=r.display_name, disabled=bool(r.disabled),
                password_version=r.password_version)


USER_CACHE_SECONDS = 1.0


class ApiStore(AuditLog):
    """Users, and the audit log (inherited): both in the state store."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self._users: dict[str, tuple[float, User | None]] = {}

    @classmethod
    async def open(cls, url: str) -> ApiStore:
        engine = await open_store(url, metadata, audit_metadata)
        await install_audit(engine)
        return cls(engine)

    async def ping(self) -> bool:
        try:
            async with self.db.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
            return True
        except (SQLAlchemyError, OSError):
            return False

    # --- users ----------------------------------------------------------------------

    async def user(self, username: str) -> User | None:
        """The user as stored. Every request asks; a second-old copy serves a burst of
        requests, and a change made through this store is seen at once."""
        now = time.monotonic()
        cached = self._users.get(username)
        if cached is not None and now - cached[0] < USER_CACHE_SECONDS:
            return cached[1]
        row = await self._user_row(username)
        user = _user(row) if row else None
        if len(self._users) > 10_000:
            self._users.clear()
        self._users[username] = (now, user)
        return user

    async def password_hash(self, username: str) -> str | None:
        row = await self._user_row(username)
        return row.password_hash if row else None

    async def _user_row(self, username: str) -> Any:
        async with self.db.connect() as conn:
            return (await conn.execute(sa.select(users_t).where(
                users_t.c.username == username))).first()

    async def users(self) -> list[User]:
        async with self.db.connect() as conn:
            rows = await conn.execute(sa.select(users_t).order_by(users_t.c.username))
            return [_user(r) for r in rows]

    async def count_admins(self) -> int:
        async with self.db.connect() as conn:
            return int((await conn.execute(sa.select(sa.func.count()).where(
                users_t.c.role == Role.ADMIN.value, users_t.c.disabled.is_(False)))).scalar_one())

    async def add_user(self, user: User, password_hash: str, created_by: str) -> bool:
        """False when the username is taken."""
        now = time.time_ns()
        try:
            async with self.db.begin() as conn:
                await conn.execute(users_t.insert().values(
                    username=user.username, password_hash=password_hash, role=user.role.value,
                    zones=json.dumps(list(user.zones)), display_name=user.display_name,
                    disabled=user.disabled, password_version=1, created_at=now,
                    created_by=created_by, updated_at=now))
        except IntegrityError:
            return False
        return True

    async def update_user(self, username: str, *, role: Role | None = None,
                          zones: Sequence[str] | None = None, display_name: str | None = None,
                          disabled: bool | None = None,
                          password_hash: str | None = None) -> User | None:
        values: dict[str, Any] = {"updated_at": time.time_ns()}
        if role is not None:
            values["role"] = role.value
        if zones is not None:
            values["zones"] = json.dumps(list(zones))
        if display_name is not None:
            values["display_name"] = display_name
        if disabled is not None:
            values["disabled"] = disabled
        if password_hash is not None:
            values["password_hash"] = password_hash
            # Tokens name the password version: a new password ends every old login.
            values["password_version"] = users_t.c.password_version + 1
        self._users.pop(username, None)
        async with self.db.begin() as conn:
            done = await conn.execute(users_t.update().where(
                users_t.c.username == username).values(**values))
        self._users.pop(username, None)
        if done.rowcount == 0:
            return None
        return await self.user(username)
