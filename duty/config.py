"""config/duty.yaml: teams, people, rotations, routes, escalation chains, channels and the
work-order rules, validated once at start (errors name the file, the item and the field)."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from duty.roster import CHINA, Calendar, Person, Roster, Rotation, Shift, Team
from facility.configfile import read_yaml, validate
from facility.messages import Severity


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TeamSpec(_Model):
    id: str
    name: str
    kind: Literal["control_room", "standby", "contractor", "leaders"]


class PersonSpec(_Model):
    id: str
    name: str
    team: str
    leader: bool = False
    mobile: str = ""
    email: str = ""
    wecom: str = ""
    dingtalk: str = ""
    feishu: str = ""
    channels: list[str] = []  # this person's channel order; default: the route's


class RotationSpec(_Model):
    team: str
    people: list[str] = Field(min_length=1)
    start: datetime  # local time unless it says otherwise
    hours: float = Field(default=12.0, gt=0, le=24 * 7)
    days: Literal["all", "workdays", "restdays"] = "all"


class Step(_Model):
    after: float = Field(default=0.0, ge=0, description="s after the incident was raised")
    notify: list[str] = Field(min_length=1)  # on_duty:TEAM, leader:TEAM, team:TEAM, person:ID


class QuietHours(_Model):
    start: time = time(22, 0)
    end: time = time(7, 0)
    # Incidents less severe than this wait for the end of quiet hours; this and worse
    # (emergencies) always go out at once.
    below: Severity = Severity.MAJOR

    def contains(self, moment: datetime) -> bool:
        t = moment.astimezone(CHINA).time()
        if self.start <= self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end

    def ends_after(self, moment: datetime) -> datetime:
        local = moment.astimezone(CHINA)
        end = local.replace(hour=self.end.hour, minute=self.end.minute, second=0,
                            microsecond=0)
        return end if end > local else end + timedelta(days=1)


class RouteSpec(_Model):
    name: str
    families: list[str] = []  # empty: every system
    zones: list[str] = []  # empty: every zone
    min_severity: Severity = Severity.WARNING
    rest_days_only: bool = False
    chain: str
    parallel: list[str] = []  # notified at once beside the chain (a standby team)
    quiet_hours: QuietHours | None = None
    channels: list[str] = ["wecom", "sms", "email"]  # tried in order, the next is fallback


class ChannelSpec(_Model):
    # Which kind it is, and the names of the environment variables holding its URL and
    # secret: secrets never live in this file.
    type: Literal["dingtalk", "feishu", "wecom", "email", "sms", "webhook", "apprise"]
    url_env: str
    secret_env: str = ""
    retries: int = Field(default=3, ge=0, le=10)
    backoff: float = Field(default=2.0, gt=0, description="s before the first retry")


class FaultRule(_Model):
    """A fault that persists this long opens a repair work order."""

    name: str
    rules: list[str] = []  # rules engine rule ids; empty: any rule of the families
    families: list[str] = []
    after: float = Field(default=600.0, ge=0)
    priority: int = Field(default=3, ge=1, le=4)
    team: str = "repair"


class WorkOrderSpec(_Model):
    faults: list[FaultRule] = []
    verify_after: float = Field(default=600.0, ge=0, description="s normal before verified")
    # SLA: s to resolve per priority (1 most urgent)
    sla: dict[int, float] = {1: 4 * 3600, 2: 24 * 3600, 3: 72 * 3600, 4: 7 * 24 * 3600}
    chain: str = "workorder"
    channels: list[str] = ["feishu", "sms", "email"]  # a new order's notice, in order


class DutyFile(_Model):
    teams: list[TeamSpec]
    people: list[PersonSpec]
    rotations: list[RotationSpec] = []
    routes: list[RouteSpec] = []
    chains: dict[str, list[Step]] = {}
    channels: dict[str, ChannelSpec] = {}
    workorders: WorkOrderSpec = WorkOrderSpec()
    link_base: str = "http://127.0.0.1:8080/ack/"  # where the acknowledge links point
    link_lifetime: float = Field(default=3600.0, gt=0)

    @model_validator(mode="after")
    def _references(self) -> DutyFile:
        teams = {t.id for t in self.teams}
        people = {p.id for p in self.people}
        for p in self.people:
            if p.team not in teams:
                raise ValueError(f"person {p.id}: no team {p.team!r}")
        for r in self.rotations:
            if r.team not in teams or not set(r.people) <= people:
                raise ValueError(f"rotation of {r.team}: unknown team or person")
        for route in self.routes:
            if route.chain not in self.chains:
                raise ValueError(f"route {route.name}: no chain {route.chain!r}")
        where = [(f"chain {name}", t) for name, steps in self.chains.items()
                 for step in steps for t in step.notify]
        where += [(f"route {r.name}", t) for r in self.routes for t in r.parallel]
        for name, target in where:
            kind, _, ref = target.partition(":")
            known = people if kind == "person" else teams
            if kind not in ("on_duty", "leader", "team", "person") or ref not in known:
                raise ValueError(f"{name}: bad target {target!r}")
        return self

    def roster(self, calendar: Calendar, first: datetime, last: datetime) -> Roster:
        teams = {t.id: Team(t.id, t.name, t.kind) for t in self.teams}
        people = {p.id: Person(p.id, p.name, p.team, p.leader,
                               {k: v for k in ("mobile", "email", "wecom", "dingtalk", "feishu")
                                if (v := getattr(p, k))}) for p in self.people}
        shifts: list[Shift] = []
        for r in self.rotations:
            start = r.start if r.start.tzinfo else r.start.replace(tzinfo=CHINA)
            shifts += Rotation(r.team, tuple(r.people), start, r.hours, r.days).expand(
                first, last, calendar)
        return Roster(teams, people, shifts)


# The office's holiday calendar, shipped beside the reports (a data file, not an import).
HOLIDAYS = Path(__file__).resolve().parent.parent / "reports" / "holidays.yaml"


class DutySettings(BaseSettings):
    """The service's own knobs, from FACILITY_DUTY_* (the secret must come from there)."""

    model_config = SettingsConfigDict(env_prefix="FACILITY_DUTY_", extra="forbid")

    file: Path = Path("duty.yaml")  # relative to the settings file's folder
    holidays_file: Path = HOLIDAYS
    site: str = ""  # default: the site file's
    tick: float = Field(default=1.0, gt=0, le=3600, description="s between chain checks")
    days: int = Field(default=60, ge=1, description="days of rotations a fresh store gets")
    host: str = "127.0.0.1"  # the acknowledge-link server
    port: int = Field(default=8091, ge=0, le=65535)
    # Signs the acknowledge links: FACILITY_DUTY_SECRET, 32+ characters. Unset: a random
    # key per process (links end with a restart).
    secret: SecretStr | None = None
    ack_timeout: float = Field(default=10.0, gt=0, description="s for the engine's answer")
    # Signs the SMS gateway's replies to POST /sms/inbound (FACILITY_DUTY_SMS_INBOUND_SECRET);
    # unset: reply codes are off.
    sms_inbound_secret: SecretStr | None = None


def load_duty(path: Path) -> DutyFile:
    return validate(DutyFile, read_yaml(path), path)
