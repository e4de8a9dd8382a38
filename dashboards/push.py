"""Upload the data source, the folder and the dashboards to a Grafana through its HTTP API
(grafana-client), idempotently: each object is read first and written only when it is
missing or differs, and dashboards keep their uid, so a second push creates nothing."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import niquests
from grafana_client.api import AsyncGrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException

from dashboards.export import FOLDER, FOLDER_UID, dashboards, datasource
from dashboards.influxql import DATASOURCE_UID
from facility.influxroutes import route_for
from facility.settings import Settings

log = logging.getLogger(__name__)
# Fields Grafana adds or bumps on its side; they do not make a dashboard different.
VOLATILE = ("id", "version")


class PushError(RuntimeError):
    pass


@dataclass(slots=True)
class PushResult:
    grafana_version: str = ""
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"Grafana {self.grafana_version}: created {len(self.created)}, "
                f"updated {len(self.updated)}, unchanged {len(self.unchanged)}")


def _same(ours: dict[str, Any], theirs: dict[str, Any]) -> bool:
    return {k: v for k, v in ours.items() if k not in VOLATILE} == \
        {k: v for k, v in theirs.items() if k not in VOLATILE}


def _missing(exc: GrafanaException) -> bool:
    return isinstance(exc, GrafanaClientError) and exc.status_code == 404


async def push(settings: Settings, *, url: str | None = None, token: str | None = None,
               resend_secrets: bool = False, site: str | None = None) -> PushResult:
    """Upload everything; the data source is `site`'s InfluxDB server (the routing table of
    facility/influxroutes.py), or the default server when no site is given."""
    options = settings.grafana
    token = token or (options.token.get_secret_value() if options.token else None)
    # grafana-client has no type hints; Any keeps mypy from flagging every call.
    api: Any = AsyncGrafanaApi.from_url(url or options.url, credential=token,
                                        timeout=options.timeout)
    result = PushResult()
    try:
        build = await api.health.check()  # GET /api/frontend/settings -> buildInfo
        result.grafana_version = str((build or {}).get("version", ""))
        await _datasource(api, settings, result, resend_secrets, site)
        await _folder(api, result)
        for board in dashboards():
            await _dashboard(api, board, result)
    except (GrafanaException, niquests.exceptions.RequestException) as exc:
        raise PushError(f"Grafana at {url or options.url}: {exc}") from exc
    finally:
        await api.client.s.close()
    return result


async def _datasource(api: Any, settings: Settings, result: PushResult,
                      resend_secrets: bool, site: str | None) -> None:
    influx = settings.influx if site is None else route_for(settings.influx, site)
    ours = datasource(url=settings.grafana.datasource_url or influx.url,
                      database=influx.database, user=influx.username or "")
    if influx.password is not None:
        ours["secureJsonData"] = {"password": influx.password.get_secret_value()}
    elif influx.token is not None:  # InfluxDB 2.x/3.x through the 1.x API
        ours["jsonData"]["httpHeaderName1"] = "Authorization"
        ours["secureJsonData"] = {"httpHeaderValue1": f"Token {influx.token.get_secret_value()}"}
    name = f"datasource {DATASOURCE_UID}"
    try:
        theirs = await api.datasource.get_datasource_by_uid(DATASOURCE_UID)
    except GrafanaException as exc:
        if not _missing(exc):
            raise
        await api.datasource.create_datasource(ours)
        result.created.append(name)
        return
    compared = ("name", "type", "url", "user", "access", "jsonData", "isDefault")
    # Grafana never returns secrets, only which ones it holds: a secret is sent again
    # only when Grafana holds none or when asked (--secrets, after a password change).
    held = set(theirs.get("secureJsonFields") or {})
    secrets_ok = set(ours.get("secureJsonData", {})) <= held and not resend_secrets
    if all(theirs.get(k) == ours.get(k) for k in compared) and secrets_ok:
        result.unchanged.append(name)
        return
    await api.datasource.update_datasource_by_uid(DATASOURCE_UID, ours)
    result.updated.append(name)


async def _folder(api: Any, result: PushResult) -> None:
    name = f"folder {FOLDER_UID}"
    try:
        theirs = await api.folder.get_folder(FOLDER_UID)
    except GrafanaException as exc:
        if not _missing(exc):
            raise
        await api.folder.create_folder(FOLDER, uid=FOLDER_UID)
        result.created.append(name)
        return
    if theirs.get("title") == FOLDER:
        result.unchanged.append(name)
        return
    await api.folder.update_folder(FOLDER_UID, title=FOLDER, overwrite=True)
    result.updated.append(name)


async def _dashboard(api: Any, board: dict[str, Any], result: PushResult) -> None:
    name = f"dashboard {board['uid']}"
    try:
        theirs = await api.dashboard.get_dashboard(board["uid"])
    except GrafanaException as exc:
        if not _missing(exc):
            raise
        theirs = None
    if theirs is not None and _same(board, theirs.get("dashboard", {})) and \
            theirs.get("meta", {}).get("folderUid") == FOLDER_UID:
        result.unchanged.append(name)
        return
    await api.dashboard.update_dashboard({
        "dashboard": {**board, "id": None}, "folderUid": FOLDER_UID, "overwrite": True,
        "message": "facility dashboards push"})
    (result.updated if theirs is not None else result.created).append(name)
