"""The tutorial's keep-alive page, done properly: `/` for uptime monitors, `/healthz` for orchestrators
(503 until the gateway is connected and the model loaded), `/metrics` for Prometheus. It runs in the
bot's event loop; nothing it serves comes from settings, so no secret can appear."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from charbot.discord.metrics import Metrics


class HealthServer:
    def __init__(self, status: Callable[[], dict[str, Any]], metrics: Metrics, *, host: str = "0.0.0.0", port: int = 8080):
        self._status = status
        self.metrics = metrics
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        app = web.Application()
        app.router.add_get("/", self._alive)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        self.app = app

    async def start(self) -> int:
        """Listen; returns the bound port (the chosen one when port 0 was asked for)."""
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.requested_port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            from charbot.errors import ConfigError

            raise ConfigError(
                f"cannot listen on {self.host}:{self.requested_port} for the health page ({exc.strerror})",
                "choose another port with --health-port / CHARBOT_HEALTH_PORT (0 picks a free one)",
            ) from None
        self.port = self._runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _alive(self, request: web.Request) -> web.Response:
        return web.Response(text="I am alive")

    async def _healthz(self, request: web.Request) -> web.Response:
        status = self._status()
        return web.json_response(status, status=200 if status.get("ready") else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": self.metrics.content_type})
