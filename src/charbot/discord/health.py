"""The tutorial's keep-alive page, done properly: `/` for uptime monitors, `/healthz` for orchestrators
(503 until the gateway is connected and the model loaded), `/metrics` for Prometheus. It runs in the
bot's event loop; nothing it serves comes from settings, so no secret can appear."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from charbot.discord.metrics import Metrics
from charbot.health import add_health_routes, listen


class HealthServer:
    def __init__(self, status: Callable[[], dict[str, Any]], metrics: Metrics, *, host: str = "0.0.0.0", port: int = 8080,
                 avatars: Callable[[str], bytes | None] | None = None):
        self.metrics = metrics
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        app = web.Application()
        app.router.add_get("/", self._alive)
        add_health_routes(app, status, metrics)
        self.avatars = avatars
        if avatars is not None:  # the cast's card pictures, for Discord to fetch as webhook avatars
            app.router.add_get("/avatars/{slug}.png", self._avatar)
        self.app = app

    async def start(self) -> int:
        """Listen; returns the bound port (the chosen one when port 0 was asked for)."""
        self._runner, self.port = await listen(self.app, self.host, self.requested_port, what="the health page", port_setting="health_port")
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _alive(self, request: web.Request) -> web.Response:
        return web.Response(text="I am alive")

    async def _avatar(self, request: web.Request) -> web.Response:
        image = self.avatars(request.match_info["slug"])
        if image is None:
            raise web.HTTPNotFound()
        return web.Response(body=image, content_type="image/png", headers={"Cache-Control": "public, max-age=3600"})
