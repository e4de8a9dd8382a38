"""Health, readiness, Prometheus metrics and the label table."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from api.deps import Ctx, CurrentUser, problems, site_contexts
from api.models import Health, Labels, Readiness
from facility import labels

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is up")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "something is not ready"}},
            summary="Ready to serve: broker connected, state store and InfluxDB answer")
async def readyz(ctx: Ctx, request: Request) -> Response:
    # An API of several sites is ready when each site's broker link and workers are.
    sites = site_contexts(request.app).values()
    checks = {"mqtt": all(c.link.connected for c in sites),
              "state_store": await ctx.store.ping(), "influxdb": await ctx.influx.ping(),
              "workers": all(c.workers_alive for c in sites)}
    ready = all(checks.values())
    body = Readiness(ready=ready, checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics",
            responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                             "description": "text exposition format"}})
async def metrics(ctx: Ctx) -> Response:
    ctx.metrics.mqtt_connected.set(1 if ctx.link.connected else 0)
    return Response(ctx.metrics.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/labels", response_model=Labels, responses=problems(401),
            summary="The Chinese words for states, statuses and names (the page loads them "
                    "once at start)")
async def label_table(_: CurrentUser) -> Labels:
    return Labels.model_validate(labels.as_json())
