"""What every HTTP-serving transport shows operators: `/healthz` (JSON, 503 until ready) and `/metrics`
(Prometheus, from a registry of the transport's own), and how it starts listening. The Discord bot's health
page and `charbot serve` both use it; nothing here knows either of them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from charbot.errors import ConfigError

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)

# The backend's prompt-cache counters (Backend.cache_stats), read at each scrape.
CACHE_COUNTERS = {
    "hits": "Prompts that restored a saved KV state.",
    "misses": "Prompts that found no saved state sharing more than what a sequence kept.",
    "saved_tokens": "Prompt tokens not read again thanks to restored states.",
    "reused_tokens": "Prompt tokens not read again: kept in a sequence or restored.",
    "evicted_bytes": "Bytes of saved states pushed out of memory by the budget.",
}


class PromptCacheCollector:
    def __init__(self, stats: Callable[[], dict[str, int]]):
        self.stats = stats

    def collect(self):
        stats = self.stats()
        for name, doc in CACHE_COUNTERS.items():
            if name in stats:
                yield CounterMetricFamily(f"charbot_prompt_cache_{name}", doc, value=stats[name])
        if "stored_bytes" in stats:
            yield GaugeMetricFamily("charbot_prompt_cache_stored_bytes", "Bytes of saved KV states in memory.", value=stats["stored_bytes"])


class MetricsRegistry:
    """A registry of one server's own, so several servers can live in one (test) process."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)

    def watch_prompt_cache(self, stats: Callable[[], dict[str, int]]) -> None:
        """Export the backend's prompt-cache counters (Backend.cache_stats), read at each scrape."""
        self.registry.register(PromptCacheCollector(stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def add_health_routes(app: web.Application, status: Callable[[], dict[str, Any]], metrics: MetricsRegistry) -> None:
    """`/healthz`: `status()` as JSON, 200 when it says ready, else 503; `/metrics`: the registry."""

    async def healthz(request: web.Request) -> web.Response:
        body = status()
        return web.json_response(body, status=200 if body.get("ready") else 503)

    async def prometheus(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": metrics.content_type})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", prometheus)


async def listen(app: web.Application, host: str, port: int, *, what: str, port_setting: str, **runner_options: Any) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port; the runner and the bound port (the chosen one when port 0 was asked for).
    A port that cannot be had is a ConfigError naming `port_setting`, the flat name of the port's setting."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None, **runner_options)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"cannot listen on {host}:{port} for {what} ({exc.strerror})",
            f"choose another port with --{port_setting.replace('_', '-')} / CHARBOT_{port_setting.upper()} (0 picks a free one)",
        ) from None
    return runner, runner.addresses[0][1]
