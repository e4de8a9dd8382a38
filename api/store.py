"""The API's tables in the state store: users, and the append-only audit log.

- api_users   one row per user: Argon2id hash, role, zones, disabled, password version
- api_audit   every attempt to command a bollard (allowed or refused), every approval
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
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from api.auth import Role, User
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

audit_t = sa.Table(
    "api_audit", metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("ts", Ns, nullable=False),
    sa.Column("site", sa.String(64), nullable=False),
    sa.Column("command", sa.String(64), nullable=False),  # command or message id
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("username", sa.String(64), nullable=False),
    sa.Column("role", sa.String(16), nullable=False, default=""),
    sa.Column("action", sa.String(32), nullable=False, default=""),
    sa.Column("targets", sa.Text, nullable=False, default=""),  # comma-separated ids
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("approved_by", sa.String(64), nullable=False, default=""),
    sa.Column("outcome", sa.String(32), nullable=False, default=""),
    sa.Column("detail", sa.Text, nullable=False, default=""),
    sa.Column("data", sa.Text, nullable=False, default="{}"),  # JSON: what else matters
    sa.Column("once", sa.String(96), nullable=True),  # set: at most one such row per command
    sa.UniqueConstraint("site", "command", "once", name="uq_api_audit_once"),
    sa.Index("ix_api_audit_site_ts", "site", "ts"),
    sa.Index("ix_api_audit_command", "site", "command"),
)

_APPEND_ONLY = {
    "sqlite": [
        "CREATE TRIGGER IF NOT EXISTS api_audit_no_update BEFORE UPDATE ON api_audit "
        "BEGIN SELECT RAISE(ABORT, 'api_audit is append-only'); END",
        "CREATE TRIGGER IF NOT EXISTS api_audit_no_delete BEFORE DELETE ON api_audit "
        "BEGIN SELECT RAISE(ABORT, 'api_audit is append-only'); END",
    ],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION api_audit_append_only() RETURNS trigger AS $$ "
        "BEGIN RAISE EXCEPTION 'api_audit is append-only'; END; $$ LANGUAGE plpgsql",
        "CREATE OR REPLACE TRIGGER api_audit_append_only BEFORE UPDATE OR DELETE ON api_audit "
        "FOR EACH ROW EXECUTE FUNCTION api_audit_append_only()",
    ],
}


class AuditError(Exception):
    """The audit log could not be written: whatever needed the record does not happen."""


class AlreadyRecorded(Exception):
    """A step that happens once per command was recorded already (a replay or a race)."""


@dataclass(frozen=True)
class AuditRow:
    seq: int
    ts: int
    site: str
    command: str
    event: str
    username: str
    role: str
    action: str
    targets: list[str]
    reason: str
    approved_by: str
    outcome: str
    detail: str
    data: dict[str, Any]


def _row(r: Any) -> AuditRow:
    return AuditRow(seq=r.seq, ts=r.ts, site=r.site, command=r.command, event=r.event,
                    username=r.username, role=r.role, action=r.action,
                    targets=[t for t in r.targets.split(",") if t], reason=r.reason,
                    approved_by=r.approved_by, outcome=r.outcome, detail=r.detail,
                    data=json.loads(r.data or "{}"))


def _user(r: Any) -> User:
    return User(username=r.username, role=Role(r.role), zones=tuple(json.loads(r.zones)),
                display_name=r.display_name, disabled=bool(r.disabled),
                password_version=r.password_version)


USER_CACHE_SECONDS = 1.0


class ApiStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.db = engine
        self._users: dict[str, tuple[float, User | None]] = {}

    @classmethod
    async def open(cls, url: str) -> ApiStore:
        engine = await open_store(url, metadata)
        statements = _APPEND_ONLY.get(engine.dialect.name, [])
        if statements:
            async with engine.begin() as conn:
                for statement in statements:
                    await conn.exec_driver_sql(statement)
        return cls(engine)

    async def close(self) -> None:
        await self.db.dispose()

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

    # --- audit ----------------------------------------------------------------------

    async def append(self, *, site: str, command: str, event: str, username: str,
                     role: str = "", action: str = "", targets: Sequence[str] = (),
                     reason: str = "", approved_by: str = "", outcome: str = "",
                     detail: str = "", data: dict[str, Any] | None = None,
                     once: str | None = None, ts: int | None = None) -> int:
        """Append one row; AlreadyRecorded if its `once` key exists, AuditError if the
        database cannot take it."""
        row = {"ts": ts or time.time_ns(), "site": site, "command": command, "event": event,
               "username": username, "role": role, "action": action,
               "targets": ",".join(targets), "reason": reason, "approved_by": approved_by,
               "outcome": outcome, "detail": detail[:2000],
               "data": json.dumps(data or {}, ensure_ascii=False), "once": once}
        try:
            async with self.db.begin() as conn:
                result = await conn.execute(audit_t.insert().values(**row))
                key = result.inserted_primary_key
                return int(key[0]) if key else 0
        except IntegrityError as exc:
            if once is not None and await self._has(site, command, once):
                raise AlreadyRecorded(f"{command}: {once}") from None
            raise AuditError(f"audit log refused the record: {exc.orig}") from None
        except (SQLAlchemyError, OSError) as exc:
            raise AuditError(f"audit log not writable: {type(exc).__name__}") from None

    async def _has(self, site: str, command: str, once: str) -> bool:
        try:
            async with self.db.connect() as conn:
                found = await conn.execute(sa.select(audit_t.c.seq).where(
                    audit_t.c.site == site, audit_t.c.command == command,
                    audit_t.c.once == once))
                return found.first() is not None
        except (SQLAlchemyError, OSError):
            return False

    async def rows(self, site: str, *, command: str | None = None,
                   commands: Sequence[str] | None = None, since: int | None = None,
                   until: int | None = None, username: str | None = None,
                   events: Sequence[str] | None = None, limit: int = 1000,
                   newest_first: bool = False) -> list[AuditRow]:
        q = sa.select(audit_t).where(audit_t.c.site == site)
        if command is not None:
            q = q.where(audit_t.c.command == command)
        if commands is not None:
            q = q.where(audit_t.c.command.in_(list(commands)))
        if since is not None:
            q = q.where(audit_t.c.ts >= since)
        if until is not None:
            q = q.where(audit_t.c.ts < until)
        if username:
            q = q.where(audit_t.c.username == username)
        if events:
            q = q.where(audit_t.c.event.in_(list(events)))
        order = audit_t.c.seq.desc() if newest_first else audit_t.c.seq
        async with self.db.connect() as conn:
            return [_row(r) for r in await conn.execute(q.order_by(order).limit(limit))]
