"""`NodeMetrics`: a node's Prometheus exposition, its API latency histogram, and the
optional plain-HTTP listener.

Owns the node's `CollectorRegistry` (one per node object, never the process-global
one: a test process may hold several nodes) and the two histograms whose samples
accumulate between scrapes (API request latency, observed by `middleware`; etcd request
latency, observed at each scrape). Everything else comes from one `snapshot.take` per
scrape, turned into families by `families.build`.

Where `/metrics` is served (docs/metrics.md):
- on the API port (HTTPS), for a ticket or an API token with `Sys.Audit` on `/`
  (`api.server` authenticates and calls `exposition`);
- and, if the node's `metrics_listen` is set (`ADDRESS:PORT`), over plain HTTP without
  authentication on that address, for a Prometheus on a trusted monitoring network.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from binome.metrics.families import METRICS, build
from binome.metrics.snapshot import Snapshot, take
from binome.metrics.sources import MetricSources

log = logging.getLogger("binome.metrics")

#: the text format `generate_latest` writes, announced as Prometheus 2.x knows it
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
#: the request key where the API's dispatch leaves the route template it matched
ROUTE_KEY = "binome.route"
API_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ETCD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _histogram(name: str, registry: CollectorRegistry, buckets: tuple[float, ...]) -> Histogram:
    spec = METRICS[name]
    return Histogram(name, spec.help, labelnames=spec.labels, registry=registry,
                     buckets=buckets)


class _ScrapeCollector:
    """Yields the families of the snapshot taken for the scrape in progress."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None

    def collect(self) -> Iterator[Metric]:
        if self.snapshot is not None:
            yield from build(self.snapshot)


class NodeMetrics:
    def __init__(self, sources: MetricSources) -> None:
        self.sources = sources
        self.registry = CollectorRegistry(auto_describe=False)
        self.api_latency = _histogram("binome_api_request_duration_seconds", self.registry,
                                      API_BUCKETS)
        self.etcd_latency = _histogram("binome_etcd_request_duration_seconds", self.registry,
                                       ETCD_BUCKETS)
        self._collector = _ScrapeCollector()
        self.registry.register(self._collector)
        self._scraping = asyncio.Lock()
        self._runner: web.AppRunner | None = None

    async def exposition(self) -> bytes:
        """The text exposition of this node, read now."""
        async with self._scraping:    # one snapshot at a time: the collector holds it
            snap = await take(self.sources)
            for request, seconds in snap.etcd_latency.items():
                self.etcd_latency.labels(request).observe(seconds)
            self._collector.snapshot = snap
            try:
                return generate_latest(self.registry)
            finally:
                self._collector.snapshot = None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Time every API request; the label is the route template, not the path (no
        vmid or node names in label values)."""
        began = time.monotonic()
        code = 500
        try:
            response = await handler(request)
            code = response.status
            return response
        except web.HTTPException as exc:
            code = exc.status
            raise
        finally:
            self.api_latency.labels(request.method, request.get(ROUTE_KEY, "unmatched"),
                                    str(code)).observe(time.monotonic() - began)

    # ------------------------------------------------------------ plain-HTTP listener

    async def start_listener(self) -> None:
        """Serve `/metrics` without authentication on `metrics_listen`, if set."""
        listen = self.sources.config.metrics_listen
        if not listen:
            return
        host, _, port = listen.rpartition(":")
        app = web.Application()
        app.router.add_get("/metrics", self._plain)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, host.strip("[]"), int(port),
                          reuse_address=True).start()
        log.info("metrics listening on http://%s/metrics", listen)

    async def stop_listener(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _plain(self, request: web.Request) -> web.Response:
        body = await self.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
