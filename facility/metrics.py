"""Service metrics in Prometheus form, one registry per service instance (no globals),
plus a small HTTP endpoint (/metrics, /healthz) that runs on the service's own loop."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class Metrics:
    """A registry and helpers to declare metrics under one service's prefix."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)

    def counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(f"facility_{self.service}_{name}", doc, labels, registry=self.registry)

    def gauge(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(f"facility_{self.service}_{name}", doc, labels, registry=self.registry)

    def histogram(self, name: str, doc: str, labels: tuple[str, ...] = (),
                  buckets: tuple[float, ...] = Histogram.DEFAULT_BUCKETS) -> Histogram:
        return Histogram(f"facility_{self.service}_{name}", doc, labels,
                         registry=self.registry, buckets=buckets)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


async def serve_metrics(registries: list[Metrics], host: str, port: int,
                        healthy: Callable[[], bool] = lambda: True) -> web.AppRunner:
    """Start /metrics and /healthz on host:port; the caller cleans up the runner."""

    async def metrics(_: web.Request) -> web.Response:
        body = b"".join(m.exposition() for m in registries)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(_: web.Request) -> web.Response:
        ok = healthy()
        return web.json_response({"ok": ok}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
