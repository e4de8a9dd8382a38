"""The command audit log: append-only rows in the state store (table `api_audit`).

Every attempt to command a bollard (allowed or refused), every approval decision and
gateway result, every manual display or PA message is a row; rows are only ever inserted.
The database refuses UPDATE and DELETE (triggers), and a unique (command, once) key makes
the steps that happen at most once per command (the request, the approval decision, each
result) atomic claims. The API writes it (api/commands.py, api/outputs.py); the API and the
shift report read it, and a command's state is folded from its rows (audit/commands.py),
so there is no second copy to disagree.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from facility.db import open_store

metadata = sa.MetaData()
Ns = sa.BigInteger

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


async def install(engine: AsyncEngine) -> None:
    """The append-only triggers (the table itself comes with `metadata`); idempotent."""
    statements = _APPEND_ONLY.get(engine.dialect.name, [])
    if statements:
        async with engine.begin() as conn:
            for statement in statements:
                await conn.exec_driver_sql(statement)


class AuditLog:
    """Appends to and reads the audit log on an engine of the state store.

    `async with await AuditLog.open(url) as log:` (as the rules' AlertStore) closes it on
    the way out."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.db = engine

    @classmethod
    async def open(cls, url: str) -> AuditLog:
        engine = await open_store(url, metadata)
        await install(engine)
        return cls(engine)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        await self.db.dispose()


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
