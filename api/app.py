"""The FastAPI application: routes, the control-room page, and the lifespan that owns the
MQTT connection, the state store and InfluxDB (api/context.py)."""

from __future__ import annotations

import contextlib
import importlib.resources
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import SecretStr
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.context import api_catalog, open_context
from api.deps import SITE_NAMES, known_query, site_names
from api.routes import (
    alerts,
    auth,
    campus,
    chargers,
    commands,
    desk,
    outputs,
    sites,
    stream,
    system,
)
from api.routes import drills as drill_routes
from api.routes import duty as duty_routes
from api.routes import pa as pa_routes
from facility.catalog import Catalog
from facility.settings import Settings
from facility.site import SiteConfig

STATIC = Path(__file__).resolve().parent / "static"

DESCRIPTION = """\
The control room of the Panyu District administrative office centre: devices and their
latest values, history from InfluxDB, alerts and incidents from the rules engine, LED
screens and PA, a live event stream, and safe, audited commands for the 42 anti-terror
bollards of the south gate.

Log in with `POST /api/auth/login` and send the token as `Authorization: Bearer <token>`.
Roles: viewer < operator < supervisor < admin; operators and supervisors act only in the
zones granted to them. See docs/api.md."""

# The page loads nothing from elsewhere; inline scripts and styles are not allowed. Media:
# the PA's last announcement, fetched with the login header and played from a blob: URL.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "media-src 'self' blob:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml",
               ".png": "image/png"}

DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} - Swagger UI</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/init.js"></script></body></html>
"""

# Swagger UI is started by a script file, not an inline one: the CSP allows no inline code.
DOCS_INIT = b"""window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui",
  deepLinking: true, presets: [SwaggerUIBundle.presets.apis], layout: "BaseLayout"});
"""


def _files(folder: Path) -> dict[str, tuple[bytes, str]]:
    return {p.name: (p.read_bytes(), MEDIA_TYPES[p.suffix]) for p in folder.iterdir()
            if p.suffix in MEDIA_TYPES}


def add_docs(app: FastAPI) -> None:
    """/docs: Swagger UI 5 (it reads OpenAPI 3.1, which FastAPI writes) from the
    swagger-ui-py package, served by the API itself: no CDN, so the page works offline and
    under the API's own Content-Security-Policy. (swagger-ui-bundle, the obvious package,
    ships Swagger UI 4.15, which cannot render OpenAPI 3.1.)"""
    wanted = ("swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png")
    static = Path(str(importlib.resources.files("swagger_ui") / "static"))
    assets = {name: body for name, body in _files(static).items() if name in wanted}
    assets["init.js"] = (DOCS_INIT, MEDIA_TYPES[".js"])
    html = DOCS_HTML.format(title=app.title).encode()

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return Response(html, media_type=MEDIA_TYPES[".html"])

    @app.get("/docs/assets/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> Response:
        if name not in assets:
            raise HTTPException(404, "no such file")
        body, media_type = assets[name]
        return Response(body, media_type=media_type,
                        headers={"Cache-Control": "public, max-age=86400"})


def add_page(app: FastAPI) -> None:
    """The control-room page: a few small files, read once and served from memory (no
    file I/O, so no worker threads, per request). Third-party files (uPlot) are in
    static/vendor/, served under /static/vendor/."""
    files = _files(STATIC)
    vendor = _files(STATIC / "vendor")

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        body, media_type = files["index.html"]
        return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in files:
            raise HTTPException(404, "no such file")
        body, media_type = files[name]
        return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})

    @app.get("/static/vendor/{name}", include_in_schema=False)
    async def vendored(name: str) -> Response:
        if name not in vendor:
            raise HTTPException(404, "no such file")
        body, media_type = vendor[name]
        return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})


def create_app(settings: Settings, catalog: Catalog,
               district: Mapping[str, Catalog] | None = None) -> FastAPI:
    """The API of `catalog`'s site, and of the other sites of `district` (a sites folder's
    catalogs by id; facility/catalog.py): a request names its site with ?site=."""
    others = [c for c in (district or {}).values() if c is not catalog]
    site_ids = [api_catalog(settings, catalog).site.site.id] + [c.site.site.id for c in others]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            ctx = await stack.enter_async_context(open_context(settings, catalog))
            contexts = {ctx.site_id: ctx}
            for other in others:
                site_id = other.site.site.id
                one = await stack.enter_async_context(
                    open_context(site_settings(settings, site_id), other))
                # One login serves every site of this API (one users table).
                one.tokens, one.throttle = ctx.tokens, ctx.throttle
                contexts[site_id] = one
            app.state.ctx = ctx
            app.state.sites = contexts
            yield

    app = FastAPI(title="facility control-room API", version="1.0.0",
                  description=DESCRIPTION, lifespan=lifespan,
                  dependencies=[Depends(known_query)], docs_url=None, redoc_url=None)
    for module in (auth, campus, alerts, desk, outputs, commands, chargers, stream,
                   system, sites):
        app.include_router(module.router)
    app.include_router(duty_routes.router)  # the duty roster and work orders
    app.include_router(drill_routes.router)  # drills (演练), supervisors, audited
    app.include_router(pa_routes.router)  # the PA zones' last announcements as audio
    add_page(app)
    add_docs(app)
    app.openapi = lambda: _described(app, catalog.site, site_ids)  # type: ignore[method-assign]  # fastapi: replacing app.openapi is its documented hook, but it is typed as a method

    @app.exception_handler(405)
    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        # Starlette names only the methods of the first route with this path; a path has a
        # route per method here, so the Allow header is gathered from all of them.
        allowed = sorted({method for route in app.routes if isinstance(route, APIRoute)
                          and route.path_regex.match(request.url.path)
                          for method in route.methods or ()})
        return JSONResponse({"detail": "method not allowed"}, status_code=405,
                            headers={"Allow": ", ".join(allowed)})

    app.add_middleware(Observe)
    return app


def site_settings(settings: Settings, site_id: str) -> Settings:
    """The settings for one more site of this API: its own site id and MQTT client id.
    Its logins are the first site's (create_app), so a missing secret is said once, by
    the first site, and a placeholder stands in here."""
    api = settings.api
    client_id = f"{api.client_id}-{site_id}" if api.client_id else ""
    secret = api.secret or SecretStr(secrets.token_urlsafe(48))
    return settings.model_copy(update={"api": api.model_copy(
        update={"site": site_id, "client_id": client_id, "secret": secret})})


def _described(app: FastAPI, site: SiteConfig, site_ids: list[str]) -> dict[str, Any]:
    """FastAPI's OpenAPI description, plus what it cannot know: 400 for a request body
    that is not JSON at all (FastAPI answers it by itself), the site's own zone, place
    and family ids as the values of those query parameters (known_query checks), and
    where it serves several sites, the `site` parameter with their ids."""
    if app.openapi_schema is None:
        spec = get_openapi(title=app.title, version=app.version, description=app.description,
                           routes=app.routes)
        names = {kind: site_names(site, kind) for kind in SITE_NAMES}
        for operations in spec["paths"].values():
            for operation in operations.values():
                if "requestBody" in operation:
                    operation["responses"].setdefault("400", {
                        "description": "The body is not valid JSON",
                        "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}}}})
                for parameter in operation.get("parameters", []):
                    if parameter["in"] == "query" and parameter["name"] in names:
                        _enumerate(parameter["schema"], names[parameter["name"]])
                _site_parameter(operation, site_ids)
        app.openapi_schema = spec
    return app.openapi_schema


def _site_parameter(operation: dict[str, Any], site_ids: list[str]) -> None:
    """The `site` query parameter takes the ids of the sites served; an API of one site
    leaves it out (it answers for that site only, as before there were several)."""
    parameters = operation.get("parameters", [])
    for parameter in parameters:
        if parameter["in"] == "query" and parameter["name"] == "site":
            if len(site_ids) > 1:
                parameter["schema"] = {"type": "string", "enum": site_ids}
            else:
                parameters.remove(parameter)
            break
    if "parameters" in operation and not parameters:
        del operation["parameters"]


def _enumerate(schema: dict[str, Any], values: list[str]) -> None:
    """Put an enum on the string items of a (possibly nullable) array parameter."""
    for option in schema.get("anyOf", [schema]):
        if option.get("type") == "array":
            option["items"] = {"type": "string", "enum": values}


class Observe:
    """Pure ASGI middleware (it must not buffer the event stream): security headers, no
    caching of API answers, and request metrics by route."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                if scope["path"].startswith("/api/") and "cache-control" not in headers:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            _count(scope, status, time.perf_counter() - started)


def _count(scope: Scope, status: int, seconds: float) -> None:
    app: Any = scope.get("app")
    ctx = getattr(getattr(app, "state", None), "ctx", None)
    if ctx is None:
        return
    path = getattr(scope.get("route"), "path", "other")
    ctx.metrics.requests.labels(scope["method"], path, str(status)).inc()
    ctx.metrics.latency.labels(path).observe(seconds)
