"""Which InfluxDB holds a site's points: the routing table of the settings (`influx.routes`).

A district's points outgrow one InfluxDB, so sites are spread over several servers: each
route names its sites (ids, or shell-style patterns such as 'school-*') and its server
(url, database, credentials); the first route that matches wins and every other site stays
on the default server (`influx:` itself). Ingest writes each point through `route_for`,
and every reader (the API, reports, the dashboards' data source) asks the same function,
so a site's points are read where they were written.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from types import TracebackType

from facility.influx import InfluxClient
from facility.settings import InfluxRoute, InfluxSettings

DEFAULT = "default"  # the name of the default server's route


def matching(influx: InfluxSettings, site: str) -> InfluxRoute | None:
    """The route of a site, or None for the default server."""
    for route in influx.routes:
        if any(fnmatchcase(site, pattern) for pattern in route.sites):
            return route
    return None


def route_name(influx: InfluxSettings, site: str) -> str:
    route = matching(influx, site)
    return DEFAULT if route is None else route.name


def route_for(influx: InfluxSettings, site: str) -> InfluxSettings:
    """The InfluxDB settings of one site: its route's server, or the default one."""
    route = matching(influx, site)
    return influx.model_copy(update={"routes": []}) if route is None \
        else server_of(influx, route)


def server_of(influx: InfluxSettings, route: InfluxRoute) -> InfluxSettings:
    """A route's server as InfluxSettings: it keeps the default's retention policy and
    timeout, and the default's credentials unless it names its own."""
    own_credentials = route.username is not None or route.token is not None
    return influx.model_copy(update={
        "url": route.url,
        "database": route.database or influx.database,
        "username": route.username if own_credentials else influx.username,
        "password": route.password if own_credentials else influx.password,
        "token": route.token if own_credentials else influx.token,
        "routes": [],
    })


def all_routes(influx: InfluxSettings) -> dict[str, InfluxSettings]:
    """Every server of the table by route name, the default first."""
    out = {DEFAULT: influx.model_copy(update={"routes": []})}
    out.update((route.name, server_of(influx, route)) for route in influx.routes)
    return out


class InfluxRouter:
    """One InfluxClient per server of the table, opened on first use; `client(site)` is
    the client of a site's server. Use as `async with InfluxRouter(settings) as router:`."""

    def __init__(self, influx: InfluxSettings) -> None:
        self.influx = influx
        self._clients: dict[str, InfluxClient] = {}
        self._by_site: dict[str, InfluxClient] = {}

    async def __aenter__(self) -> InfluxRouter:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        clients, self._clients = self._clients, {}
        self._by_site.clear()
        for client in clients.values():
            await client.__aexit__(None, None, None)

    async def client(self, site: str) -> InfluxClient:
        found = self._by_site.get(site)
        if found is not None:
            return found
        name = route_name(self.influx, site)
        found = self._clients.get(name)
        if found is None:
            found = await InfluxClient(route_for(self.influx, site)).__aenter__()
            self._clients[name] = found
        if len(self._by_site) < 100_000:
            self._by_site[site] = found
        return found
