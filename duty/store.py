"""The duty service's state in the SQL state store (SQLite or PostgreSQL, keyed by site):

- duty_teams, duty_people, duty_shifts   the roster (shifts are the one truth)
- duty_notices     one row per (incident, person, event, step): the unique key is what
                   makes "nobody notified twice" hold across restarts and redeliveries
- duty_attempts    every delivery attempt: channel, try number, outcome, why
- duty_links       redeemed acknowledge links (single use) ...
- duty_audit       ... and who did what (links, handovers, work orders)
- duty_handovers   one shift to the next: what was open, who took it and when
- duty_pages       the escalations under way (a restart resumes their chains)
- duty_workorders  the orders, their timeline in `data`

The duty service writes; the API and the CLI read and act through the same methods.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from duty.escalate import Attempt, Notice
from duty.roster import Person, Roster, Shift, Team, merge_shifts
from duty.workorders import WorkOrder
from facility.db import open_store

metadata = sa.MetaData()
Ns = sa.BigInteger
_Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")

teams_t = sa.Table(
    "duty_teams", metadata,
    sa.Column("site", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("kind", sa.String(20), nullable=False))

people_t = sa.Table(
    "duty_people", metadata,
    sa.Column("site", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("team", sa.String(64), nullable=False),
    sa.Column("leader", sa.Boolean, nullable=False),
    sa.Column("contacts", sa.Text, nullable=False))  # JSON

shifts_t = sa.Table(
    "duty_shifts", metadata,
    sa.Column("site", sa.String(64), primary_key=True),
    sa.Column("uid", sa.String(255), primary_key=True),
    sa.Column("team", sa.String(64), nullable=False),
    sa.Column("person", sa.String(64), nullable=False),
    sa.Column("start_ns", Ns, nullable=False),
    sa.Column("end_ns", Ns, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("replaces", sa.String(64), nullable=False),
    sa.Column("summary", sa.Text, nullable=False),
    sa.Column("stamp_ns", Ns, nullable=False),
    sa.Index("ix_duty_shifts_time", "site", "start_ns"))

notices_t = sa.Table(
    "duty_notices", metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("site", sa.String(64), nullable=False),
    sa.Column("incident", sa.String(64), nullable=False),
    sa.Column("person", sa.String(64), nullable=False),
    sa.Column("event", sa.String(16), nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("ts_ns", Ns, nullable=False),
    sa.Column("first", sa.Boolean, nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("channel", sa.String(64), nullable=False, default=""),  # '' until delivered
    sa.Column("delivered_ns", Ns, nullable=False, default=0),
    sa.UniqueConstraint("site", "incident", "person", "event", "step",
                        name="uq_duty_notice_once"))

attempts_t = sa.Table(
    "duty_attempts", metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("site", sa.String(64), nullable=False),
    sa.Column("incident", sa.String(64), nullable=False),
    sa.Column("person", sa.String(64), nullable=False),
    sa.Column("event", sa.String(16), nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("channel", sa.String(64), nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("ts_ns", Ns, nullable=False),
    sa.Column("ok", sa.Boolean, nullable=False),
    sa.Column("retryable", sa.Boolean, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Index("ix_duty_attempts_incident", "site", "incident"))

links_t = sa.Table(
    "duty_links", metadata,
    sa.Column("nonce", sa.String(64), primary_key=True),
    sa.Column("site", sa.String(64), nullable=False),
    sa.Column("person", sa.String(64), nullable=False),
    sa.Column("incident", sa.String(64), nullable=False),
    sa.Column("used_ns", Ns, nullable=False))

audit_t = sa.Table(
    "duty_audit", metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("site", sa.String(64), nullable=False),
    sa.Column("ts_ns", Ns, nullable=False),
    sa.Column("who", sa.Text, nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("target", sa.String(255), nullable=False),
    sa.Column("detail", sa.Text, nullable=False))

handovers_t = sa.Table(
    "duty_handovers", metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("site", sa.String(64), nullable=False),
    sa.Column("team", sa.String(64), nullable=False),
    sa.Column("outgoing", sa.Text, nullable=False),
    sa.Column("incoming", sa.Text, nullable=False),
    sa.Column("ts_ns", Ns, nullable=False),
    sa.Column("items", sa.Text, nullable=False),  # JSON: alerts, incidents, orders, notes
    sa.Column("acked_by", sa.Text, nullable=False, default=""),
    sa.Column("acked_ns", Ns, nullable=False, default=0))

pages_t = sa.Table(
    "duty_pages", metadata,  # the open escalations, so a restart resumes their chains
    sa.Column("site", sa.String(64), primary_key=True),
    sa.Column("incident", sa.String(64), primary_key=True),
    sa.Column("data", sa.Text, nullable=False))

workorders_t = sa.Table(
    "duty_workorders", metadata,
    sa.Column("site", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("number", sa.String(64), nullable=False),
    sa.Column("device", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("team", sa.String(64), nullable=False),
    sa.Column("assignee", sa.String(64), nullable=False),
    sa.Column("opened_ns", Ns, nullable=False),
    sa.Column("data", sa.Text, nullable=False))


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def _dt(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


def _dt_ns(value: datetime) -> int:
    return int(value.timestamp()) * 10**9 + value.microsecond * 1000


class DutyStore:
    def __init__(self, engine: AsyncEngine, site: str) -> None:
        self.engine = engine
        self.site = site

    @classmethod
    async def open(cls, url: str, site: str) -> Self:
        return cls(await open_store(url, metadata), site)

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # --- roster -----------------------------------------------------------------------

    async def save_roster(self, roster: Roster) -> None:
        """Teams and people replaced; shifts merged by uid (see put_shifts)."""
        async with self.engine.begin() as conn:
            for table in (teams_t, people_t):
                await conn.execute(table.delete().where(table.c.site == self.site))
            if roster.teams:
                await conn.execute(teams_t.insert(), [
                    {"site": self.site, "id": t.id, "name": t.name, "kind": t.kind}
                    for t in roster.teams.values()])
            if roster.people:
                await conn.execute(people_t.insert(), [
                    {"site": self.site, "id": p.id, "name": p.name, "team": p.team,
                     "leader": p.leader, "contacts": json.dumps(p.contacts, ensure_ascii=False)}
                    for p in roster.people.values()])
        await self.put_shifts(roster.shifts)

    async def put_shifts(self, shifts: Iterable[Shift]) -> int:
        rows = [{"site": self.site, "uid": s.uid, "team": s.team, "person": s.person,
                 "start_ns": _dt_ns(s.start), "end_ns": _dt_ns(s.end), "kind": s.kind,
                 "replaces": s.replaces, "summary": s.summary, "stamp_ns": _dt_ns(s.stamp)}
                for s in shifts]
        async with self.engine.begin() as conn:
            for row in rows:
                await conn.execute(shifts_t.delete().where(
                    (shifts_t.c.site == self.site) & (shifts_t.c.uid == row["uid"])))
            if rows:
                await conn.execute(shifts_t.insert(), rows)
        return len(rows)

    async def roster(self) -> Roster:
        async with self.engine.connect() as conn:
            teams = (await conn.execute(teams_t.select().where(
                teams_t.c.site == self.site))).mappings().all()
            people = (await conn.execute(people_t.select().where(
                people_t.c.site == self.site))).mappings().all()
            shifts = (await conn.execute(shifts_t.select().where(
                shifts_t.c.site == self.site))).mappings().all()
        return Roster(
            {t["id"]: Team(t["id"], t["name"], t["kind"]) for t in teams},
            {p["id"]: Person(p["id"], p["name"], p["team"], p["leader"],
                             json.loads(p["contacts"])) for p in people},
            merge_shifts([], (Shift(uid=s["uid"], team=s["team"], person=s["person"],
                                    start=_dt(s["start_ns"]), end=_dt(s["end_ns"]),
                                    kind=s["kind"], replaces=s["replaces"],
                                    summary=s["summary"], stamp=_dt(s["stamp_ns"]))
                              for s in shifts)))

    # --- notices and attempts ---------------------------------------------------------

    async def add_notice(self, notice: Notice) -> bool:
        """Record a notice before it is sent; False when it was already (never send it)."""
        try:
            async with self.engine.begin() as conn:
                await conn.execute(notices_t.insert().values(
                    site=self.site, incident=notice.incident, person=notice.person,
                    event=notice.event, step=notice.step, ts_ns=_ns(notice.ts),
                    first=notice.first, title=notice.title, text=notice.text, channel="",
                    delivered_ns=0))
        except IntegrityError:
            return False
        return True

    async def delivered(self, notice: Notice, channel: str, ts: float) -> None:
        c = notices_t.c
        async with self.engine.begin() as conn:
            await conn.execute(notices_t.update().where(
                (c.site == self.site) & (c.incident == notice.incident)
                & (c.person == notice.person) & (c.event == notice.event)
                & (c.step == notice.step)).values(channel=channel, delivered_ns=_ns(ts)))

    async def add_attempt(self, a: Attempt) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(attempts_t.insert().values(
                site=self.site, incident=a.incident, person=a.person, event=a.event,
                step=a.step, channel=a.channel, n=a.n, ts_ns=_ns(a.ts), ok=a.ok,
                retryable=a.retryable, detail=a.detail))

    async def notices(self, incident: str = "", limit: int = 500) -> list[dict[str, Any]]:
        q = notices_t.select().where(notices_t.c.site == self.site)
        if incident:
            q = q.where(notices_t.c.incident == incident)
        q = q.order_by(notices_t.c.ts_ns.desc(), notices_t.c.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings().all()]

    async def attempts(self, incident: str = "") -> list[dict[str, Any]]:
        q = attempts_t.select().where(attempts_t.c.site == self.site)
        if incident:
            q = q.where(attempts_t.c.incident == incident)
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q.order_by(attempts_t.c.id)))
                    .mappings().all()]

    # --- links and audit --------------------------------------------------------------

    async def redeem(self, nonce: str, person: str, incident: str, ts: float) -> bool:
        """Record a link as used, with its audit row; False when it was used before."""
        try:
            async with self.engine.begin() as conn:
                await conn.execute(links_t.insert().values(
                    nonce=nonce, site=self.site, person=person, incident=incident,
                    used_ns=_ns(ts)))
                await conn.execute(audit_t.insert().values(
                    site=self.site, ts_ns=_ns(ts), who=person, action="ack_link",
                    target=incident, detail=""))
        except IntegrityError:
            return False
        return True

    async def link_used(self, nonce: str) -> bool:
        async with self.engine.connect() as conn:
            found = await conn.execute(sa.select(links_t.c.nonce).where(
                links_t.c.nonce == nonce))
            return found.first() is not None

    async def audit(self, who: str, action: str, target: str, detail: str, ts: float) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(audit_t.insert().values(
                site=self.site, ts_ns=_ns(ts), who=who, action=action, target=target,
                detail=detail))

    async def audit_rows(self, limit: int = 200) -> list[dict[str, Any]]:
        q = audit_t.select().where(audit_t.c.site == self.site) \
            .order_by(audit_t.c.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings().all()]

    # --- handover ---------------------------------------------------------------------

    async def add_handover(self, team: str, outgoing: str, incoming: str,
                           items: dict[str, Any], ts: float) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(handovers_t.insert().values(
                site=self.site, team=team, outgoing=outgoing, incoming=incoming,
                ts_ns=_ns(ts), items=json.dumps(items, ensure_ascii=False), acked_by="",
                acked_ns=0))
            await conn.execute(audit_t.insert().values(
                site=self.site, ts_ns=_ns(ts), who=outgoing, action="handover",
                target=team, detail=f"to {incoming}"))
            key = result.inserted_primary_key
            assert key is not None
            return int(key[0])

    async def handover_items(self, notes: list[str]) -> dict[str, Any]:
        """What the outgoing shift leaves open: incidents it was paged for that have not
        been both acknowledged and cleared, work orders not yet verified, the notes."""
        seen: dict[str, set[str]] = {}
        for row in await self.notices(limit=2000):
            seen.setdefault(row["incident"], set()).add(row["event"])
        incidents = sorted(i for i, events in seen.items()
                           if "workorder" not in events
                           and not {"acknowledged", "cleared"} <= events)
        orders = [{"id": o.id, "state": o.state, "device": o.device, "fault": o.fault}
                  for o in await self.orders(("open", "assigned", "in_progress", "resolved"))]
        return {"incidents": incidents, "workorders": orders, "notes": notes}

    async def ack_handover(self, handover: int, by: str, ts: float) -> bool:
        c = handovers_t.c
        async with self.engine.begin() as conn:
            done = await conn.execute(handovers_t.update().where(
                (c.site == self.site) & (c.id == handover) & (c.acked_ns == 0))
                .values(acked_by=by, acked_ns=_ns(ts)))
            if done.rowcount != 1:
                return False
            await conn.execute(audit_t.insert().values(
                site=self.site, ts_ns=_ns(ts), who=by, action="handover_ack",
                target=str(handover), detail=""))
        return True

    async def handovers(self, limit: int = 50, number: int = 0) -> list[dict[str, Any]]:
        """The newest handovers, or the one numbered `number`."""
        q = handovers_t.select().where(handovers_t.c.site == self.site) \
            .order_by(handovers_t.c.id.desc()).limit(limit)
        if number:
            q = q.where(handovers_t.c.id == number)
        async with self.engine.connect() as conn:
            rows = [dict(r) for r in (await conn.execute(q)).mappings().all()]
        for row in rows:
            row["items"] = json.loads(row["items"])
        return rows

    # --- escalations under way ---------------------------------------------------------

    async def save_pages(self, pages: dict[str, str]) -> None:
        """Replace the site's open escalations (incident -> JSON); there are few."""
        async with self.engine.begin() as conn:
            await conn.execute(pages_t.delete().where(
                (pages_t.c.site == self.site) & ~pages_t.c.incident.startswith("@")))
            if pages:
                await conn.execute(pages_t.insert(), [
                    {"site": self.site, "incident": k, "data": v} for k, v in pages.items()])

    async def pages(self) -> dict[str, str]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(pages_t.select().where(
                pages_t.c.site == self.site))).mappings().all()
        return {r["incident"]: r["data"] for r in rows if not r["incident"].startswith("@")}

    async def save_state(self, name: str, data: str) -> None:
        """A small named state of the service (the faults under watch) as JSON."""
        key = f"@{name}"  # '@' is not in an incident id: no clash with the pages
        async with self.engine.begin() as conn:
            await conn.execute(pages_t.delete().where(
                (pages_t.c.site == self.site) & (pages_t.c.incident == key)))
            await conn.execute(pages_t.insert().values(site=self.site, incident=key, data=data))

    async def load_state(self, name: str) -> str:
        async with self.engine.connect() as conn:
            found = (await conn.execute(sa.select(pages_t.c.data).where(
                (pages_t.c.site == self.site) & (pages_t.c.incident == f"@{name}")))).first()
        return str(found[0]) if found is not None else ""

    async def notice_keys(self) -> set[tuple[str, str, str, int]]:
        c = notices_t.c
        q = sa.select(c.incident, c.person, c.event, c.step).where(c.site == self.site)
        async with self.engine.connect() as conn:
            return {(r[0], r[1], r[2], r[3]) for r in (await conn.execute(q)).all()}

    # --- work orders ------------------------------------------------------------------

    async def save_orders(self, orders: Iterable[WorkOrder]) -> None:
        async with self.engine.begin() as conn:
            for o in orders:
                c = workorders_t.c
                await conn.execute(workorders_t.delete().where(
                    (c.site == self.site) & (c.id == o.id)))
                await conn.execute(workorders_t.insert().values(
                    site=self.site, id=o.id, kind=o.kind, number=o.number, device=o.device,
                    state=o.state, priority=o.priority, team=o.team, assignee=o.assignee,
                    opened_ns=_ns(o.opened_at),
                    data=json.dumps(asdict(o), ensure_ascii=False, default=str)))

    async def orders(self, states: Iterable[str] = ()) -> list[WorkOrder]:
        q = workorders_t.select().where(workorders_t.c.site == self.site)
        wanted = list(states)
        if wanted:
            q = q.where(workorders_t.c.state.in_(wanted))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q.order_by(workorders_t.c.opened_ns))).mappings().all()
        return [WorkOrder(**json.loads(r["data"])) for r in rows]
