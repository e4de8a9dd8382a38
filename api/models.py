"""Request and response bodies: the API's OpenAPI schema is generated from these.

Request bodies ignore fields they do not declare (`extra="ignore"`): a client that sends
`approved_by`, `issued_by`, `role` or `status` where they are not accepted changes
nothing. Who did something always comes from the login token.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from api.auth import Role
from facility.scalar import Scalar

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
COMMAND_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$"  # room for '.<bollard>' suffixes
USERNAME_PATTERN = r"^[a-z][a-z0-9_.-]{1,31}$"
ZONE_PATTERN = r"^(\*|[A-Za-z0-9][A-Za-z0-9_.-]{0,63})$"
MIN_PASSWORD = 10  # the floor of the password policy (api.min_password_length may ask more)
ZoneId = Annotated[str, StringConstraints(pattern=ZONE_PATTERN)]
DeviceId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Password = Annotated[str, StringConstraints(min_length=MIN_PASSWORD, max_length=1024)]


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Problem(BaseModel):
    """An error: what went wrong, in words a person can act on."""

    detail: str


class ValidationProblem(BaseModel):
    detail: list[dict[str, Any]]


# --- auth and users -----------------------------------------------------------------


class LoginRequest(Request):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class UserView(BaseModel):
    username: str
    role: Role
    zones: list[str]
    display_name: str
    disabled: bool


class LoginResponse(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_at: float = Field(description="Unix time (s) the token stops working")
    user: UserView


class NewUser(Request):
    username: str = Field(pattern=USERNAME_PATTERN)
    password: Password
    role: Role
    zones: list[ZoneId] = Field(default_factory=list, max_length=64,
                                description="zone ids the user may act in; ['*'] for all")
    display_name: str = Field(default="", max_length=100)

    @field_validator("zones")
    @classmethod
    def _zones(cls, zones: list[str]) -> list[str]:
        return sorted(set(zones))


class UserChange(Request):
    """Admin changes to a user; fields left out stay as they are."""

    role: Role | None = None
    zones: list[ZoneId] | None = Field(default=None, max_length=64)
    display_name: str | None = Field(default=None, max_length=100)
    disabled: bool | None = None
    password: Password | None = None

    @field_validator("zones")
    @classmethod
    def _zones(cls, zones: list[str] | None) -> list[str] | None:
        return None if zones is None else sorted(set(zones))


class PasswordChange(Request):
    """A user changes their own password (every other login of theirs ends)."""

    current_password: str = Field(min_length=1, max_length=1024)
    new_password: Password


# --- campus and devices -------------------------------------------------------------


class PlanPoint(BaseModel):
    x: float = Field(description="percent of the plan's width")
    y: float = Field(description="percent of the plan's height")


class ZoneView(BaseModel):
    id: str
    name: str


class PlaceView(BaseModel):
    id: str
    name: str
    kind: str
    zone: str
    building: str | None
    plan: PlanPoint | None
    floor_area_m2: float | None


class GatewayView(BaseModel):
    id: str
    name: str
    kind: str
    online: bool | None
    status_reason: str


class SiteView(BaseModel):
    id: str
    name: str
    timezone: str
    zones: list[ZoneView]
    places: list[PlaceView]
    gateways: list[GatewayView]


class LatestValues(BaseModel):
    ts: int = Field(description="time of the reading, ns since the Unix epoch")
    quality: str = Field(description="good, stale, comm_failure, device_error, bad_value")
    values: dict[str, Scalar]
    units: dict[str, str]
    errors: dict[str, str] = Field(description="values left out of the reading, and why")
    source: Literal["live", "influxdb"]


class AlertSummary(BaseModel):
    count: int
    worst_severity: str | None


class DeviceView(BaseModel):
    id: str
    name: str
    family: str
    kind: str
    place: str
    place_name: str
    zone: str
    zone_name: str
    building: str
    gateway: str
    controller: str = Field(description="the PLC or fire panel it depends on, if any")
    plan: PlanPoint | None
    online: bool | None = Field(description="null: no status heard yet")
    status_reason: str
    latest: LatestValues | None
    alerts: AlertSummary


class DeviceDetail(DeviceView):
    value_names: list[str]
    open_alerts: list[AlertView]


class HistoryPoint(BaseModel):
    t: int = Field(description="start of the interval, ms since the Unix epoch")
    v: Scalar | None


class History(BaseModel):
    device: str
    field: str
    aggregate: str
    interval_s: int
    start: int = Field(description="ms since the Unix epoch")
    end: int
    query: str = Field(description="the InfluxQL that produced the points")
    points: list[HistoryPoint]


class BuildingEnergy(BaseModel):
    building: str
    name: str
    kwh: float
    kgce: float
    by_load: dict[str, float]
    meters: list[str]


class EnergyToday(BaseModel):
    since: int = Field(description="local midnight, ms since the Unix epoch")
    formula: str
    buildings: list[BuildingEnergy]


# --- alerts -------------------------------------------------------------------------


class AlertView(BaseModel):
    id: str
    rule: str
    source: str
    state: str
    active: bool
    acknowledged: bool
    severity: str
    priority: int
    category: str
    family: str
    place: str
    zone: str
    incident: str
    title: str
    text: str
    value: Scalar | None
    unit: str
    raised_at: int
    cleared_at: int
    acked_at: int
    acked_by: str
    closed_at: int
    shelved_until: int
    shelved_by: str
    out_of_service_by: str
    suppressed_by: str
    escalation: int
    escalated_to: str
    chattering: bool
    updated_at: int
    late_s: int = Field(default=0, description="raised by an input this many seconds old "
                        "(a backlog after an outage); 0 if on time")
    peak_severity: str | None = Field(default=None, description="the highest severity it "
                                      "reached (it keeps that until acknowledged and normal)")
    drill: str = Field(default="", description="the drill (演练) that raised it; empty for a "
                       "real alert (show 演练 beside it: labels DRILL_PREFIX)")


class Transition(BaseModel):
    ts: int
    action: str
    from_state: str
    to_state: str
    by: str
    comment: str
    detail: dict[str, Any]


class AlertDetail(AlertView):
    history: list[Transition]


class IncidentView(BaseModel):
    id: str
    category: str
    title: str
    severity: str
    priority: int
    place: str
    zone: str
    zones: list[str]
    active: bool
    opened_at: int
    cleared_at: int
    closed_at: int
    members: list[str]


class SiteBrief(BaseModel):
    """A site this API serves (GET /api/sites): what the page's site switcher lists."""

    id: str
    name: str
    timezone: str
    kind: str | None = Field(description="kind of public body (labels public_body_kind)")
    home: bool = Field(description="the site the API answers for without ?site=")


class GatewayCount(BaseModel):
    total: int
    online: int
    offline: int
    unknown: int = Field(description="no status heard since the API started")


class SiteLinkView(BaseModel):
    bridge: str
    up: bool = Field(description="the site broker's bridge to the centre is connected")


Connectivity = Literal["online", "partial", "offline", "unreachable", "unknown"]


class SiteOverview(SiteBrief):
    """A site in the district overview: its alarms and its connection to the centre."""

    connectivity: Connectivity = Field(
        description="unreachable: a bridge of the site's broker is down; else from its "
                    "gateways: all online, some offline (partial), all offline, none heard")
    gateways: GatewayCount
    links: list[SiteLinkView]
    open_alerts: int = Field(description="open alerts shown to operators (not shelved, "
                                         "suppressed or out of service)")
    unacknowledged: int
    alerts_by_severity: dict[str, int] = Field(description="open alerts by severity, "
                                                           "every severity named")
    worst_severity: str | None
    open_incidents: list[IncidentView] = Field(description="newest first, at most 20")
    open_incident_count: int


class DistrictView(BaseModel):
    """Every site this API serves, worst first: by the worst open alert, then by
    connectivity (unreachable, offline, partial, unknown, online), then incidents."""

    sites: list[SiteOverview]
    open_incidents: int
    open_alerts: int
    connectivity: dict[str, int] = Field(description="sites by connectivity")


class IncidentDetail(IncidentView):
    alerts: list[AlertView]
    cap_documents: int


class AckRequest(Request):
    comment: str = Field(default="", max_length=1000)


class CommentRequest(Request):
    comment: str = Field(min_length=1, max_length=1000)


class ShelveRequest(Request):
    minutes: float = Field(gt=0, le=7 * 24 * 60, description="how long it stays shelved")
    comment: str = Field(min_length=1, max_length=1000, description="why (ISA-18.2)")


class ServiceRequest(Request):
    comment: str = Field(min_length=1, max_length=1000)


class OperationResult(BaseModel):
    ok: bool
    alert: AlertView | None
    detail: str


# --- displays and PA ----------------------------------------------------------------


class ShownMessage(BaseModel):
    id: str
    kind: str
    priority: int
    title: str
    text: str
    colour: str
    incident: str
    alert: str
    ts: int


class Delivery(BaseModel):
    message: str
    attempts: int
    first_sent: int
    last_sent: int
    confirmed_at: int
    status: str = Field(description="shown, duplicate, rejected, or pending")


class DisplayView(BaseModel):
    id: str
    name: str
    kind: str
    zone: str | None
    covers: list[str]
    place: str | None
    max_chars: int
    default_content: str
    shown: ShownMessage | None
    delivery: Delivery | None


class DisplayMessageRequest(Request):
    text: str = Field(min_length=1, max_length=500)
    priority: int = Field(default=9, ge=1, le=9,
                          description="1 most urgent; 1-2 are emergencies (supervisor). It "
                                      "pre-empts what ranks below it and yields to what ranks "
                                      "above, like automatic messages; 9 = normal content")


class BroadcastRequest(Request):
    zones: list[str] = Field(min_length=1, max_length=20, description="PA zone ids")
    text: str = Field(min_length=1, max_length=500)
    priority: int = Field(default=5, ge=1, le=9,
                          description="1 most urgent; 1-2 are emergencies (supervisor)")
    repeat: int = Field(default=1, ge=1, le=10)


class ManualDelivery(BaseModel):
    zone: str
    message: str
    status: str


class BroadcastView(BaseModel):
    id: str
    by: str
    ts: int
    text: str
    priority: int
    kind: str
    deliveries: list[ManualDelivery]


# --- bollard commands ---------------------------------------------------------------

CommandAction = Literal["raise", "lower", "raise_all", "lower_all", "emergency_rise",
                        "reset_faults"]


class CommandBase(Request):
    id: str = Field(pattern=COMMAND_ID_PATTERN,
                    description="unique, chosen by the client (e.g. a UUID); a repeated "
                                "id returns the first command and executes nothing")
    reason: str = Field(min_length=2, max_length=500, pattern=r"\S.*\S|\S\S",
                        description="why (recorded in the audit log and the command)")

    @field_validator("reason")
    @classmethod
    def _reason(cls, reason: str) -> str:
        return reason.strip()


class BollardCommand(CommandBase):
    """Raise or lower one bollard or a group."""

    action: Literal["raise", "lower"]
    bollards: set[DeviceId] = Field(min_length=1, max_length=100,
                                    description="the bollard ids (one, or a group)")


class GateCommand(CommandBase):
    """The whole gate: raise all, lower all (two supervisors), emergency rise, reset."""

    action: Literal["raise_all", "lower_all", "emergency_rise", "reset_faults"]
    controller: str | None = Field(default=None, pattern=ID_PATTERN,
                                   description="the PLC; default: the site's only one")


CommandRequest = Annotated[BollardCommand | GateCommand, Field(discriminator="action")]


class ApprovalRequest(Request):
    comment: str = Field(default="", max_length=500)


class AuditEntry(BaseModel):
    seq: int
    ts: int
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


# --- health -------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, bool]


class Labels(BaseModel):
    """The one label table (facility/labels.py): the Chinese word for each id."""

    severity: dict[str, str]
    severity_rank: dict[str, int] = Field(description="higher is worse")
    severity_order: list[str] = Field(description="worst first")
    alert_state: dict[str, str]
    history_action: dict[str, str]
    command_action: dict[str, str]
    command_status: dict[str, str]
    approval: dict[str, str]
    bollard: dict[str, str]
    ev_status: dict[str, str]
    family: dict[str, str]
    quality: dict[str, str]
    availability: dict[str, str]
    delivery: dict[str, str]
    role: dict[str, str]
    value: dict[str, str] = Field(description="names of the values devices report")
    device_state: dict[str, str]
    event: dict[str, str]
    device_kind: dict[str, str]
    http_status: dict[str, str] = Field(description="what the page says for an error answer")
    aggregate: dict[str, str]
    plan_state: dict[str, str] = Field(description="a device's colour on the campus plan")
    incident_state: dict[str, str]
    connectivity: dict[str, str] = Field(description="a site's connection to the centre")
    public_body_kind: dict[str, str] = Field(description="a site's kind of public body")
    drill: dict[str, str] = Field(description="drills (演练): each scenario's name, and the "
                                  "words drill, started, ended")
    drill_prefix: str = Field(description="what a drill's alerts, screens and notices start "
                              "with (【演练】)")
    drill_speech_prefix: str = Field(description="what a drill's spoken announcements start "
                                     "with")


DeviceDetail.model_rebuild()
