"""The rules engine's durable state, in the SQL state store (SQLite or PostgreSQL).

Tables (all keyed by site, so several sites share one database):

- rules_alerts          one row per alert occurrence, its current state and who did what
- rules_alert_history   every transition: raised, acknowledged, shelved, cleared, closed...
- rules_incidents       groups of related alerts, with the latest CAP 1.2 document
- rules_cap             every CAP document issued (identifier, incident, sent, xml)
- rules_points          shelving, out of service and maintenance of rule/source points
- rules_instances       rule timers (for, clear_for, command deadlines, correlations)
- rules_endpoints       what each screen shows and its layers; PA announcements
- rules_deliveries      every DisplayMessage/Broadcast sent: attempts, confirmation
- rules_series          per source: the samples of its rate()/avg()/... windows
- rules_meta            per-site heartbeat, first start, last-seen times, unconfirmed
                        messages

The engine is the only writer for its site; the API and the reports read through the
query methods of AlertStore (documented in docs/rules.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, Self

import msgspec
import sqlalchemy as sa
from sqlalchemy import pool
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from facility.db import open_store
from facility.sqlite import set_pragmas
from rules.alerts import Alert, Incident, Point
from rules.engine import Effects, Snapshot
from rules.evaluate import Instance
from rules.lease import Fence
from rules.route import EndpointState

log = logging.getLogger(__name__)
metadata = sa.MetaData()
Ns = sa.BigInteger

alerts_t = sa.Table(
    "rules_alerts", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("site", sa.String(64), nullable=False),
    sa.Column("rule", sa.String(64), nullable=False),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("acknowledged", sa.Boolean, nullable=False),
    sa.Column("severity", sa.String(10), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("category", sa.String(10), nullable=False),
    sa.Column("family", sa.String(32), nullable=False, default=""),
    sa.Column("place", sa.String(64), nullable=False, default=""),
    sa.Column("zone", sa.String(64), nullable=False, default=""),
    sa.Column("incident", sa.String(64), nullable=False, default=""),
    sa.Column("title", sa.Text, nullable=False, default=""),
    sa.Column("text", sa.Text, nullable=False, default=""),
    sa.Column("raised_at", Ns, nullable=False),
    sa.Column("cleared_at", Ns, nullable=False, default=0),
    sa.Column("acked_at", Ns, nullable=False, default=0),
    sa.Column("acked_by", sa.Text, nullable=False, default=""),
    sa.Column("closed_at", Ns, nullable=False, default=0),
    sa.Column("shelved_until", Ns, nullable=False, default=0),
    sa.Column("shelved_by", sa.Text, nullable=False, default=""),
    sa.Column("out_of_service_by", sa.Text, nullable=False, default=""),
    sa.Column("suppressed_by", sa.String(64), nullable=False, default=""),
    sa.Column("escalation", sa.Integer, nullable=False, default=0),
    sa.Column("escalated_to", sa.String(64), nullable=False, default=""),
    sa.Column("raise_count", sa.Integer, nullable=False, default=1),
    sa.Column("chattering", sa.Boolean, nullable=False, default=False),
    sa.Column("updated_at", Ns, nullable=False),
    sa.Column("data", sa.Text, nullable=False),  # the whole record as JSON
    sa.Index("ix_rules_alerts_site_open", "site", "closed_at"),
    sa.Index("ix_rules_alerts_site_raised", "site", "raised_at"),
)

history_t = sa.Table(
    "rules_alert_history", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("alert", sa.String(64), nullable=False),
    sa.Column("site", sa.String(64), nullable=False),
    sa.Column("ts", Ns, nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("from_state", sa.String(20), nullable=False),
    sa.Column("to_state", sa.String(20), nullable=False),
    sa.Column("by", sa.Text, nullable=False, default=""),
    sa.Column("comment", sa.Text, nullable=False, default=""),
    sa.Column("detail", sa.Text, nullable=False, default="{}"),
    sa.Index("ix_rules_history_alert", "alert"),
    sa.Index("ix_rules_history_site_ts", "site", "ts"),
)

incidents_t = sa.Table(
    "rules_incidents", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("site", sa.String(64), nullable=False),
    sa.Column("category", sa.String(64), nullable=False),
    sa.Column("title", sa.Text, nullable=False, default=""),
    sa.Column("severity", sa.String(10), nullable=False),
    sa.Column("place", sa.String(64), nullable=False, default=""),
    sa.Column("zone", sa.String(64), nullable=False, default=""),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("opened_at", Ns, nullable=False),
    sa.Column("cleared_at", Ns, nullable=False, default=0),
    sa.Column("closed_at", Ns, nullable=False, default=0),
    sa.Column("updated_at", Ns, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("cap_xml", sa.Text, nullable=False, default=""),
    sa.Index("ix_rules_incidents_site_open", "site", "closed_at"),
)

cap_t = sa.Table(
    "rules_cap", metadata,
    sa.Column("identifier", sa.String(200), primary_key=True),
    sa.Column("site", sa.String(64), nullable=False),
    sa.Column("incident", sa.String(64), nullable=False, index=True),
    sa.Column("sent", Ns, nullable=False),
    sa.Column("xml", sa.Text, nullable=False),
)


def _keyed(name: str, *key: str) -> sa.Table:
    return sa.Table(name, metadata,
                    *(sa.Column(k, sa.String(200), primary_key=True) for k in key),
                    sa.Column("data", sa.Text, nullable=False),
                    sa.Column("updated_at", Ns, nullable=False))


points_t = _keyed("rules_points", "site", "rule", "source")
instances_t = _keyed("rules_instances", "site", "rule", "source")
endpoints_t = _keyed("rules_endpoints", "site", "endpoint")
meta_t = _keyed("rules_meta", "site", "key")
series_t = _keyed("rules_series", "site", "source")

deliveries_t = sa.Table(
    "rules_deliveries", metadata,
    sa.Column("message", sa.String(64), primary_key=True),
    sa.Column("site", sa.String(64), nullable=False),
    sa.Column("endpoint", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("incident", sa.String(64), nullable=False, default=""),
    sa.Column("text", sa.Text, nullable=False, default=""),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("first_sent", Ns, nullable=False),
    sa.Column("last_sent", Ns, nullable=False),
    sa.Column("acked_at", Ns, nullable=False, default=0),
    sa.Column("ack_status", sa.String(16), nullable=False, default=""),
    sa.Index("ix_rules_deliveries_site_sent", "site", "first_sent"),
)


def _sqlite_writer(url: str) -> sa.Engine | None:
    """A synchronous engine on the same SQLite file (None for other databases)."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    engine = sa.create_engine(f"sqlite:///{parsed.database}", poolclass=pool.SingletonThreadPool,
                              connect_args={"timeout": 2, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(conn: Any, _record: Any) -> None:
        # The one PRAGMA list, and no checkpoint inside a commit: it fsyncs the database
        # file, in the service's thread, for up to hundreds of ms. AlertStore.checkpoint()
        # runs them off-thread.
        set_pragmas(conn, extra=("wal_autocheckpoint=0",))

    return engine


def _json(value: Any) -> str:
    """Compact UTF-8 JSON; msgspec takes the dataclasses as they are (no deep copy)."""
    return msgspec.json.encode(value, enc_hook=str).decode()


Statements = dict[tuple[str, str], Any]


def _alert_row(alert: Alert) -> dict[str, Any]:
    data = alert.to_json()
    row = {c.name: data[c.name] for c in alerts_t.columns if c.name in data}
    row.update(state=alert.state.value, severity=alert.severity.value, data=_json(data))
    return row


@dataclass
class Step:
    """One step of the engine to store: written in one transaction, on a synchronous
    connection (SQLite in the service's own thread, or PostgreSQL through run_sync)."""

    site: str
    effects: Effects
    now: int
    pending: list[dict[str, Any]] | None
    last_seen: dict[str, int] | None
    series: dict[str, dict[str, Any]] | None
    started: int
    statements: Statements
    fence: Fence | None = None

    def write(self, conn: sa.Connection) -> None:
        if self.fence is not None:  # first: raises LeaseLost and rolls back if not ours
            self.fence.check(conn)
        site, effects, now = self.site, self.effects, self.now
        pending, last_seen, series, started = \
            self.pending, self.last_seen, self.series, self.started
        self._upsert(conn, alerts_t, [_alert_row(a) for a, _, _, _ in effects.alerts],
                     ["id"])
        if effects.transitions:
            conn.execute(history_t.insert(), [
                {"alert": t.alert, "site": t.site, "ts": t.ts, "action": t.action,
                 "from_state": t.from_state, "to_state": t.to_state, "by": t.by,
                 "comment": t.comment, "detail": _json(t.detail)}
                for t in effects.transitions])
        self._upsert(conn, incidents_t, [
            {"id": i.id, "site": i.site, "category": i.category, "title": i.title,
             "severity": i.severity.value, "place": i.place, "zone": i.zone,
             "active": i.active, "opened_at": i.opened_at, "cleared_at": i.cleared_at,
             "closed_at": i.closed_at, "updated_at": now, "data": _json(i.to_json()),
             "cap_xml": i.cap_xml} for i in effects.incidents], ["id"])
        if effects.caps:
            self._upsert(conn, cap_t, [
                {"identifier": ident, "site": site, "incident": inc, "sent": sent,
                 "xml": xml} for ident, inc, sent, xml in effects.caps], ["identifier"])
        self._upsert(conn, points_t, [
            {"site": site, "rule": p.rule, "source": p.source, "data": _json(p),
             "updated_at": now} for p in effects.points], ["site", "rule", "source"])
        self._upsert(conn, instances_t, [
            {"site": site, "rule": i.rule, "source": i.source, "data": _json(i),
             "updated_at": now} for i in effects.instances], ["site", "rule", "source"])
        self._upsert(conn, endpoints_t, [
            {"site": site, "endpoint": e, "data": _json(s), "updated_at": now}
            for e, s in effects.endpoints.items()], ["site", "endpoint"])
        self._upsert(conn, deliveries_t, [
            {"message": d.message.id, "site": site, "endpoint": d.endpoint, "kind": d.kind,
             "incident": d.incident, "text": d.message.text, "attempts": d.attempt,
             "first_sent": d.message.ts, "last_sent": now, "acked_at": 0,
             "ack_status": ""} for d in effects.deliveries], ["message"])
        for endpoint, message, ts, status in effects.acks:
            conn.execute(deliveries_t.update().where(
                deliveries_t.c.message == message, deliveries_t.c.endpoint == endpoint,
                deliveries_t.c.acked_at == 0).values(acked_at=ts, ack_status=status))
        if series:
            self._upsert(conn, series_t, [
                {"site": site, "source": source, "data": _json(item), "updated_at": now}
                for source, item in series.items()], ["site", "source"])
        meta = [{"site": site, "key": "heartbeat", "data": _json(now), "updated_at": now}]
        if started:
            meta.append({"site": site, "key": "started", "data": _json(started),
                         "updated_at": now})
        if last_seen is not None:
            meta.append({"site": site, "key": "last_seen", "data": _json(last_seen),
                         "updated_at": now})
        if pending is not None:
            meta.append({"site": site, "key": "pending", "data": _json(pending),
                         "updated_at": now})
        self._upsert(conn, meta_t, meta, ["site", "key"])



    def _upsert(self, conn: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]],
                keys: Sequence[str]) -> None:
        if not rows:
            return
        dialect = conn.dialect.name
        stmt = self.statements.get((dialect, table.name))
        if stmt is None:  # built once per table: building it costs more than running it
            insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
            columns = {c.name for c in table.columns} - set(keys)
            stmt = self.statements[(dialect, table.name)] = insert.on_conflict_do_update(
                index_elements=list(keys), set_={c: insert.excluded[c] for c in columns})
        conn.execute(stmt, list(rows))


class AlertStore:
    """The rules tables on one database: the engine's writes and everybody's reads.

    On SQLite the engine's steps are written on a plain synchronous connection in the
    caller's thread (about a millisecond), not through aiosqlite's worker thread: that
    costs a thread hand-over per statement, and each hand-over waits for the GIL, up to
    5 ms while the service takes in thousands of readings a second; a fire's step was
    7 ms idle and up to 80 ms under load that way. Readers use the async pool."""

    def __init__(self, engine: AsyncEngine, writer: sa.Engine | None = None) -> None:
        self.db = engine
        self.writer = writer
        self.statements: Statements = {}
        # Set by a leased worker (rules/lease.py): every write of the engine checks in its
        # own transaction that the site's lease is still this worker's, at its epoch.
        self.fence: Fence | None = None

    @classmethod
    async def open(cls, url: str) -> AlertStore:
        return cls(await open_store(url, metadata), _sqlite_writer(url))

    async def __aenter__(self) -> Self:
        """`async with await AlertStore.open(url) as store:` closes it on the way out."""
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self.writer is not None:
            await self.checkpoint()
            self.writer.dispose()
        await self.db.dispose()

    async def checkpoint(self) -> None:
        """Copy the SQLite write-ahead log into the database, in a worker thread (its
        fsync must not stop the service's loop). The service calls it every few seconds."""
        if self.writer is not None:
            await asyncio.to_thread(self._checkpoint)

    def _checkpoint(self) -> None:
        assert self.writer is not None
        with self.writer.connect() as conn:  # this thread's own connection
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    # --- the engine's side ----------------------------------------------------------

    async def load(self, site: str) -> Snapshot:
        snap = Snapshot()
        async with self.db.connect() as conn:
            rows = await conn.execute(sa.select(alerts_t.c.data).where(
                alerts_t.c.site == site, alerts_t.c.closed_at == 0))
            snap.alerts = [Alert.from_json(json.loads(r.data)) for r in rows]
            rows = await conn.execute(sa.select(incidents_t.c.data, incidents_t.c.cap_xml).where(
                incidents_t.c.site == site, incidents_t.c.closed_at == 0))
            snap.incidents = [Incident.from_json(json.loads(r.data), r.cap_xml) for r in rows]
            rows = await conn.execute(sa.select(points_t.c.data).where(points_t.c.site == site))
            snap.points = [Point(**json.loads(r.data)) for r in rows]
            rows = await conn.execute(sa.select(instances_t.c.data).where(
                instances_t.c.site == site))
            snap.instances = [Instance.from_json(json.loads(r.data)) for r in rows]
            rows = await conn.execute(sa.select(endpoints_t.c.endpoint, endpoints_t.c.data).where(
                endpoints_t.c.site == site))
            snap.endpoints = {r.endpoint: EndpointState.from_json(json.loads(r.data))
                              for r in rows}
            rows = await conn.execute(sa.select(meta_t.c.key, meta_t.c.data).where(
                meta_t.c.site == site))
            meta = {r.key: json.loads(r.data) for r in rows}
            rows = await conn.execute(sa.select(series_t.c.source, series_t.c.data).where(
                series_t.c.site == site))
            snap.series = {r.source: json.loads(r.data) for r in rows}
        snap.pending = meta.get("pending", [])
        snap.heartbeat = int(meta.get("heartbeat", 0))
        snap.started = int(meta.get("started", 0))
        snap.last_seen = {k: int(v) for k, v in (meta.get("last_seen") or {}).items()}
        return snap

    async def apply(self, site: str, effects: Effects, now: int,
                    pending: list[dict[str, Any]] | None = None, *,
                    last_seen: dict[str, int] | None = None,
                    series: dict[str, dict[str, Any]] | None = None,
                    started: int = 0) -> None:
        """Store one step of the engine in one transaction (before anything is published).
        `last_seen`, `series` (a slice of the window samples) and `started` come with the
        heartbeat, every few seconds, not with every step."""
        step = Step(site, effects, now, pending, last_seen, series, started, self.statements,
                    self.fence)
        if self.writer is not None:
            try:
                with self.writer.begin() as conn:
                    step.write(conn)
                return
            except sa.exc.OperationalError as exc:  # locked by another writer for long
                log.warning("state store: %s; writing through the pool instead", exc)
        async with self.db.begin() as conn:
            await conn.run_sync(step.write)

    async def delete_instances(self, site: str, rules: set[str]) -> None:
        if rules:
            async with self.db.begin() as conn:
                if self.fence is not None:
                    await conn.run_sync(self.fence.check)
                await conn.execute(instances_t.delete().where(
                    instances_t.c.site == site, instances_t.c.rule.in_(sorted(rules))))

    # --- the query API (control-room API, shift report) -----------------------------

    async def alerts(self, site: str, *, open_only: bool = False,
                     states: Sequence[str] | None = None, since: int | None = None,
                     until: int | None = None, rule: str | None = None,
                     source: str | None = None, incident: str | None = None,
                     limit: int = 1000) -> list[Alert]:
        """Alerts of a site, newest first. `since`/`until` bound raised_at (ns)."""
        q = sa.select(alerts_t.c.data).where(alerts_t.c.site == site)
        if open_only:
            q = q.where(alerts_t.c.closed_at == 0)
        if states:
            q = q.where(alerts_t.c.state.in_(list(states)))
        if since is not None:
            q = q.where(alerts_t.c.raised_at >= since)
        if until is not None:
            q = q.where(alerts_t.c.raised_at < until)
        if rule:
            q = q.where(alerts_t.c.rule == rule)
        if source:
            q = q.where(alerts_t.c.source == source)
        if incident:
            q = q.where(alerts_t.c.incident == incident)
        q = q.order_by(alerts_t.c.raised_at.desc(), alerts_t.c.id).limit(limit)
        async with self.db.connect() as conn:
            return [Alert.from_json(json.loads(r.data)) for r in await conn.execute(q)]

    async def alert(self, alert_id: str) -> Alert | None:
        async with self.db.connect() as conn:
            row = (await conn.execute(sa.select(alerts_t.c.data).where(
                alerts_t.c.id == alert_id))).first()
        return Alert.from_json(json.loads(row.data)) if row else None

    async def history(self, alert_id: str | None = None, *, site: str | None = None,
                      since: int | None = None, until: int | None = None,
                      actions: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Transitions, oldest first: of one alert, or of a site within [since, until)."""
        q = sa.select(history_t)
        if alert_id:
            q = q.where(history_t.c.alert == alert_id)
        if site:
            q = q.where(history_t.c.site == site)
        if since is not None:
            q = q.where(history_t.c.ts >= since)
        if until is not None:
            q = q.where(history_t.c.ts < until)
        if actions:
            q = q.where(history_t.c.action.in_(list(actions)))
        async with self.db.connect() as conn:
            rows = await conn.execute(q.order_by(history_t.c.ts, history_t.c.id))
            return [{**r._asdict(), "detail": json.loads(r.detail)} for r in rows]

    async def incidents(self, site: str, *, open_only: bool = False, since: int | None = None,
                        limit: int = 500) -> list[Incident]:
        q = sa.select(incidents_t.c.data, incidents_t.c.cap_xml).where(incidents_t.c.site == site)
        if open_only:
            q = q.where(incidents_t.c.closed_at == 0)
        if since is not None:
            q = q.where(incidents_t.c.opened_at >= since)
        q = q.order_by(incidents_t.c.opened_at.desc()).limit(limit)
        async with self.db.connect() as conn:
            return [Incident.from_json(json.loads(r.data), r.cap_xml)
                    for r in await conn.execute(q)]

    async def incident(self, incident_id: str) -> Incident | None:
        async with self.db.connect() as conn:
            row = (await conn.execute(sa.select(incidents_t.c.data, incidents_t.c.cap_xml).where(
                incidents_t.c.id == incident_id))).first()
        return Incident.from_json(json.loads(row.data), row.cap_xml) if row else None

    async def cap_documents(self, incident_id: str) -> list[str]:
        """Every CAP 1.2 document issued for an incident, oldest first."""
        async with self.db.connect() as conn:
            rows = await conn.execute(sa.select(cap_t.c.xml).where(
                cap_t.c.incident == incident_id).order_by(cap_t.c.sent, cap_t.c.identifier))
            return [r.xml for r in rows]

    async def displays(self, site: str) -> dict[str, dict[str, Any]]:
        """What each screen was last told to show (a DisplayMessage as a dict)."""
        async with self.db.connect() as conn:
            rows = await conn.execute(sa.select(endpoints_t.c.endpoint, endpoints_t.c.data).where(
                endpoints_t.c.site == site))
            return {r.endpoint: json.loads(r.data).get("shown") or {} for r in rows}

    async def deliveries(self, site: str, *, since: int | None = None,
                         endpoint: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(deliveries_t).where(deliveries_t.c.site == site)
        if since is not None:
            q = q.where(deliveries_t.c.first_sent >= since)
        if endpoint:
            q = q.where(deliveries_t.c.endpoint == endpoint)
        async with self.db.connect() as conn:
            rows = await conn.execute(q.order_by(deliveries_t.c.first_sent))
            return [r._asdict() for r in rows]

    async def points(self, site: str) -> list[Point]:
        """Shelved, out-of-service and in-maintenance points."""
        async with self.db.connect() as conn:
            rows = await conn.execute(sa.select(points_t.c.data).where(points_t.c.site == site))
            points = [Point(**json.loads(r.data)) for r in rows]
        return [p for p in points if p.shelved_by or p.out_of_service_by or p.maintenance_by]


def to_builtins(item: Alert | Incident | Point) -> dict[str, Any]:
    built: dict[str, Any] = msgspec.to_builtins(asdict(item))
    return built
