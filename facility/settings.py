"""Connection and service settings: facility.yaml, overridden by FACILITY_* variables.

An environment variable names a section and a key: FACILITY_MQTT_URL sets mqtt.url,
FACILITY_INFLUX_DATABASE sets influx.database, FACILITY_INGEST_BATCH_SIZE sets
ingest.batch_size. So one command runs against the demo's servers, a test's private ones,
or production, without editing a file.

Where the configuration is: the configuration folder holds facility.yaml, site.yaml,
endpoints.yaml, models/, vendors/ and rules/ (and sites/ for a district of sites). It
is FACILITY_CONFIG_DIR when set, else the folder shipped with the code (facility/defaults:
package data in an install, a link to the repository's config/ in a checkout).
FACILITY_CONFIG (or --config) names another settings file; then its own folder is the
configuration folder, unless FACILITY_CONFIG_DIR or `config_dir` says otherwise.
Relative paths in the settings resolve against it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import pydantic
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from facility.configfile import ConfigError, describe, read_yaml

# The configuration shipped with the code (pyproject.toml's package data).
SHIPPED_CONFIG_DIR = Path(__file__).resolve().parent / "defaults"


def http_url(value: str, example: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must look like {example}")
    return value.rstrip("/")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MqttSettings(Section):
    url: SecretStr = SecretStr("mqtt://127.0.0.1:1883")
    client_prefix: str = "facility"
    keepalive: int = Field(default=30, ge=5, le=3600)
    tls_ca: Path | None = None  # CA file for mqtts:// brokers

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: SecretStr) -> SecretStr:
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("must look like mqtt://[user:pass@]host[:port] or mqtts://...")
        return value


class InfluxRoute(Section):
    """A line of the InfluxDB routing table: the sites whose points live on another server
    (facility/influxroutes.py). Unset fields are the default server's (`influx:`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,40}$")  # spool files and logs
    sites: list[str] = Field(min_length=1)  # site ids, or patterns like 'school-*'
    url: str
    database: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        return http_url(value, "http://host:8086")


class InfluxSettings(Section):
    url: str = "http://127.0.0.1:8086"
    database: str = Field(default="facility", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
    retention_policy: str = Field(default="raw", pattern=r"^[A-Za-z0-9_]{1,64}$")
    retention: str = Field(default="400d", pattern=r"^(INF|\d+[hdw])$")
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None  # InfluxDB 2.x/3.x through their 1.x-compatible API
    timeout: float = Field(default=10.0, gt=0)
    # Sites whose points go to other servers, first match wins; the rest stay here
    # (FACILITY_INFLUX_ROUTES='[{"name": "east", "sites": ["school-*"], "url": ...}]').
    routes: list[InfluxRoute] = []

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        return http_url(value, "http://host:8086")

    @field_validator("routes")
    @classmethod
    def _distinct(cls, value: list[InfluxRoute]) -> list[InfluxRoute]:
        names = [r.name for r in value]
        if len(set(names)) != len(names) or "default" in names:
            raise ValueError("route names must differ from each other and from 'default'")
        return value


class SpoolSettings(Section):
    """The disk spools: the gateways' and the rules engine's outboxes, ingest's overflow.

    Each service keeps its files in its own folder under `dir`."""

    dir: Path = Path("../var/spool")  # relative to the configuration folder
    gateway: Path = Path("gateway")
    ingest: Path = Path("ingest")
    rules: Path = Path("rules")
    # An outbox (gateway, rules) keeps this many messages in RAM before it writes to disk.
    memory_limit: int = Field(default=20_000, ge=100, description="messages in RAM")
    publish_window: int = Field(default=200, ge=1, description="unconfirmed QoS 1 publishes")


class GatewaySettings(Section):
    stale_factor: float = Field(default=3.0, gt=1, description="x report period => stale")


class IngestSettings(Section):
    client_id: str = "ingest"
    site: str = "+"  # the site whose messages to store; '+' for every site on the broker
    # "$share/<group>/..." subscriptions when set: copies share the load, but each one's
    # loss count then takes the others' messages for lost (ingest/service.py)
    shared_group: str = ""
    batch_size: int = Field(default=5000, ge=1, le=100_000)
    batch_interval: float = Field(default=0.25, gt=0, le=60)
    pipeline: int = Field(default=2, ge=1, le=16, description="batch writes in flight")
    receive_maximum: int = Field(default=20_000, ge=10, le=65_535)
    # 1: every message acknowledged after InfluxDB took it. 0: telemetry mode, for
    # throughput over certainty (nothing is redelivered after a crash).
    qos: int = Field(default=1, ge=0, le=1)
    # After InfluxDB has failed this long, batches go to a disk spool and are acknowledged.
    spool_after: float = Field(default=5.0, gt=0)
    loss_grace: float = Field(default=60.0, gt=0, description="s before a gap is a loss")
    session_expiry: int = Field(default=7 * 24 * 3600, ge=0)
    # Workers on a shared subscription with PostgreSQL: a worker slot (client id) silent
    # this long is retired by a live worker, so nothing waits at the broker for a dead
    # machine's slot (ingest/service.py); 0: never, a slot waits for its own process.
    slot_ttl: float = Field(default=30.0, ge=0, description="s")


class StateSettings(Section):
    # sqlite:///path (relative to the settings file) or postgresql://user@host:5432/db
    url: SecretStr = SecretStr("sqlite:///../var/state.sqlite")

    def resolved(self, base: Path) -> str:
        url = self.url.get_secret_value()
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
            return prefix + str((base / url[len(prefix):]).resolve())
        return url


class GrafanaSettings(Section):
    """Where `facility dashboards push` uploads the dashboards (grafana-client)."""

    url: str = "http://127.0.0.1:3000"
    token: SecretStr | None = None  # a service-account token; FACILITY_GRAFANA_TOKEN
    folder: str = "番禺区行政办公中心"
    folder_uid: str = Field(default="facility", pattern=r"^[A-Za-z0-9_-]{1,40}$")
    # The InfluxDB data source as Grafana reaches it (may differ from influx.url).
    datasource_url: str | None = None
    timeout: float = Field(default=10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        return http_url(value, "http://host:3000")


class ReportSettings(Section):
    """Energy-saving and shift reports: where they go and what counts as office hours."""

    output_dir: Path = Path("../var/reports")
    office_start: str = Field(default="08:30", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    office_end: str = Field(default="18:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    workdays: list[int] = Field(default=[1, 2, 3, 4, 5], description="ISO weekdays")
    holidays_file: Path | None = None  # default: the calendar shipped in reports/
    rollup_retention_policy: str = Field(default="rollup", pattern=r"^[A-Za-z0-9_]{1,64}$")
    rollup_retention: str = Field(default="INF", pattern=r"^(INF|\d+[hdw])$")
    shift_start: str = Field(default="08:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")


class RulesSettings(Section):
    """The rules engine and the emergency outputs (rules/, config/rules, config/endpoints)."""

    rules_dir: Path = Path("rules")  # relative to the configuration folder
    site: str = ""  # the site this worker owns (default: the site file's); one worker per site
    tick: float = Field(default=1.0, gt=0, le=60, description="s between timer evaluations")
    incident_hold: float = Field(default=30.0, ge=0, description="s outputs stay after clear")
    suppression_grace: float = Field(
        default=5.0, ge=0, description="s a child stays suppressed after its parent cleared")
    chatter_count: int = Field(default=3, ge=2, description="raises within chatter_window")
    chatter_window: float = Field(default=60.0, gt=0)
    reload_poll: float = Field(default=2.0, gt=0, description="s between rule-file checks")
    cap_sender: str = ""  # CAP 1.2 sender; default facility-rules@<site>
    cap_status: str = Field(default="Actual", pattern="^(Actual|Exercise|System|Test|Draft)$")
    display_host: str = "127.0.0.1"  # the simulated screens' pages (facility up)
    display_port: int = Field(default=8090, ge=0, le=65535)


class ApiSettings(Section):
    """The control-room API and page (api/): where it listens, tokens, command safety."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    site: str = ""  # the site it serves (default: the site file's)
    client_id: str = ""  # MQTT client id; default <client_prefix>-api-<site>
    # Signs the login tokens (HS256). FACILITY_API_SECRET; every API process of a site needs
    # the same one. Unset: a random key per process (tokens end with a restart).
    secret: SecretStr | None = None
    token_lifetime: float = Field(default=8 * 3600, ge=60, le=7 * 24 * 3600,
                                  description="s a login token is valid (one shift)")
    min_password_length: int = Field(default=10, ge=10, le=128)
    login_attempts: int = Field(default=5, ge=1, description="failures before a lockout")
    login_lockout: float = Field(default=60.0, ge=0, description="s a user is locked out")
    command_validity: float = Field(default=30.0, gt=0, le=600,
                                    description="s a bollard command stays valid")
    approval_timeout: float = Field(default=120.0, gt=0, le=3600,
                                    description="s a second supervisor has to approve")
    lower_without_approval: int = Field(
        default=6, ge=1, description="bollards one request may lower without approval")
    result_timeout: float = Field(default=60.0, gt=0,
                                  description="s after validity with no gateway result")
    replay_buffer: int = Field(default=5000, ge=10, le=1_000_000,
                               description="live-stream events kept for reconnects")
    history_points: int = Field(default=300, ge=10, le=5000, description="default points")

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (e.g. `openssl rand -base64 48`)")
        return value


class OcppSettings(Section):
    """The OCPP 1.6J central system (csms/): where charge points connect, and how."""

    host: str = "127.0.0.1"
    port: int = Field(default=8180, ge=0, le=65535)
    site: str = ""  # the site it serves (default: the site file's)
    gateway: str = ""  # the site file's OCPP gateway (default: the only one)
    config_file: Path = Path("ocpp.yaml")  # credentials (hashed) and staff cards
    # 0: no authentication (a closed test bench only); 1: HTTP Basic per charge point;
    # 2: Basic over TLS (tls_cert and tls_key). OCPP 1.6 security whitepaper profiles.
    security_profile: int = Field(default=1, ge=0, le=2)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    heartbeat_interval: int = Field(
        default=60, ge=1, le=86_400,
        description="s; a charge point silent this long is closed and offline")
    call_timeout: float = Field(default=30.0, gt=0, le=600,
                                description="s a charge point has to answer a command")
    client_id: str = ""  # MQTT client id; default <client_prefix>-csms-<site>


class BridgeSettings(Section):
    """A site broker's bridge to the central broker (`facility broker bridge`,
    facility/bridge.py). The password comes from the environment only
    (FACILITY_BRIDGE_REMOTE_PASSWORD), read when the file is generated."""

    remote: str = Field(default="centre.district.local:8883",
                        pattern=r"^[A-Za-z0-9_.:\[\]-]+:\d{1,5}$")  # host:port
    name: str = Field(default="centre", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    remote_username: str = ""  # default: bridge-<site>
    remote_password: SecretStr | None = None
    tls: bool = True  # off only for a test bench on loopback
    cafile: Path | None = None  # the centre's CA (bridge_cafile)
    certfile: Path | None = None  # the site's client certificate, if the centre asks one
    keyfile: Path | None = None
    # MQTT 3.1.1 only: a v5 bridge of Mosquitto 2.0.11 connects with no session expiry
    # (the centre forgets what it held for the site during a cut) and, with the window
    # the order needs (max_inflight_messages 0), a Receive Maximum of 0 that the centre
    # refuses as a protocol error (both measured; docs/district.md).
    protocol: Literal["mqttv311"] = "mqttv311"
    keepalive: int = Field(default=30, ge=5, le=3600, description="s between pings")
    restart_base: int = Field(default=5, ge=1, description="s, first reconnect delay")
    restart_cap: int = Field(default=60, ge=1, description="s, longest reconnect delay")
    # The queue holds an outage this long at the site's normal rate (its devices' report
    # periods); messages are counted at message_bytes each for max_queued_bytes.
    queue_hours: float = Field(default=2.0, gt=0, le=168)
    message_bytes: int = Field(default=600, ge=100, le=262_144)


class Settings(BaseSettings):
    """Everything a service needs to connect. Secrets stay SecretStr and out of logs."""

    model_config = SettingsConfigDict(
        env_prefix="FACILITY_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="forbid",
    )

    # The configuration folder; default: the settings file's (FACILITY_CONFIG_DIR).
    config_dir: Path | None = None
    # The catalog (facility/catalog.py), relative to the configuration folder.
    site_file: Path = Path("site.yaml")
    models_dir: Path = Path("models")  # register maps, one YAML per device model
    vendors_dir: Path = Path("vendors")  # vendor MQTT mappings, one YAML per vendor
    endpoints_file: Path = Path("endpoints.yaml")  # screens, terminals, PA zones
    # A district: a folder of site files, one per site (facility/catalog.py
    # load_district). Unset: the one site of site_file and endpoints_file, as before.
    sites_dir: Path | None = None
    # The sites this process serves, by id (FACILITY_SITE_IDS='["a","b"]', or a command's
    # --sites a,b); empty: every site of the folder.
    site_ids: list[str] = []
    spool: SpoolSettings = SpoolSettings()
    mqtt: MqttSettings = MqttSettings()
    influx: InfluxSettings = InfluxSettings()
    gateway: GatewaySettings = GatewaySettings()
    ingest: IngestSettings = IngestSettings()
    state: StateSettings = StateSettings()
    rules: RulesSettings = RulesSettings()
    grafana: GrafanaSettings = GrafanaSettings()
    reports: ReportSettings = ReportSettings()
    api: ApiSettings = ApiSettings()
    ocpp: OcppSettings = OcppSettings()
    bridge: BridgeSettings = BridgeSettings()
    # Where this file came from, to resolve relative paths; not a setting.
    config_path: Path = Field(default=SHIPPED_CONFIG_DIR / "facility.yaml", exclude=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file's values, which arrive as init kwargs.
        return (env_settings, init_settings)

    @property
    def config_folder(self) -> Path:
        """The configuration folder (a relative `config_dir` is the settings file's)."""
        folder = self.config_path.parent
        return folder if self.config_dir is None else folder / self.config_dir

    def resolve(self, path: Path) -> Path:
        """A path from the settings, relative to the configuration folder."""
        return path if path.is_absolute() else self.config_folder / path

    @property
    def site_path(self) -> Path:
        return self.resolve(self.site_file)

    @property
    def sites_path(self) -> Path | None:
        return None if self.sites_dir is None else self.resolve(self.sites_dir)

    def spool_path(self, service: Literal["gateway", "ingest", "rules"]) -> Path:
        """The folder of one service's spool files."""
        sub: Path = getattr(self.spool, service)
        return self.resolve(self.spool.dir) / sub

    @property
    def state_url(self) -> str:
        return self.state.resolved(self.config_folder)


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read the settings file plus environment: `path`, else FACILITY_CONFIG, else
    facility.yaml in FACILITY_CONFIG_DIR or the shipped configuration folder. A missing
    file is no error: the defaults and the environment are the settings then."""
    folder = Path(os.environ.get("FACILITY_CONFIG_DIR") or SHIPPED_CONFIG_DIR)
    path = path or Path(os.environ.get("FACILITY_CONFIG") or folder / "facility.yaml")
    data = read_yaml(path) if path.exists() else {}
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the settings file must be a mapping")
    data = {**data, **overrides, "config_path": path.resolve()}
    try:
        return Settings(**data)
    except pydantic.ValidationError as exc:
        raise ConfigError(
            describe(path, data, exc) + "\n(values may also come from FACILITY_* variables)"
        ) from None


def redact_url(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()
