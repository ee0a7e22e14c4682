"""The `charbot serve` HTTP application: the OpenAI-compatible API under `/v1`, the page at `/`, and
`/healthz` + `/metrics` as the Discord bot serves them. Every error is OpenAI's JSON error body, never a
traceback; with an API key set, everything under `/v1` asks for it (`Authorization: Bearer …`)."""

from __future__ import annotations

import hmac
import logging
import math
import time
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from charbot.config import Settings
from charbot.engine import Engine, Reply
from charbot.health import add_health_routes
from charbot.memory import MemoryStoreError
from charbot.persona import CharacterCard
from charbot.serve.characters import Characters
from charbot.serve.completions import chat_completions
from charbot.serve.metrics import ServeMetrics
from charbot.serve.openai_api import ApiError, model_card

log = logging.getLogger(__name__)

# The page loads only what this server serves, and shows card text as text (never as markup).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}


def page_dir() -> Path:
    return Path(str(resources.files("charbot.serve") / "page"))


def _memory_key(model_id: str, conversation: str) -> str:
    return f"api:{model_id}:{conversation}"


class ServeApp:
    def __init__(self, engine: Engine, settings: Settings, *, api_key: str | None = None):
        self.engine = engine
        self.limits = settings.serve
        self._key = api_key.encode() if api_key else None
        cards = [engine.default_persona, *(c for c in engine.personas.values() if c is not engine.default_persona)]
        self.characters = Characters(cards, engine.user_name)
        self.metrics = ServeMetrics()
        self.metrics.watch_prompt_cache(engine.backend.cache_stats)
        self.metrics.queue_depth.set_function(lambda: engine.scheduler.depth)
        self.metrics.inflight.set_function(lambda: engine.scheduler.inflight)
        self.ready = False  # the model has loaded and answered once
        self.started_at = time.time()
        self._typical_seconds = 1.0  # a moving average of reply times: how long a 429 tells clients to wait
        app = web.Application(client_max_size=self.limits.max_body_bytes, middlewares=[self._errors, self._auth])
        r = app.router
        r.add_get("/", self._page)
        r.add_get("/page/{name}", self._asset)
        r.add_get("/v1/models", self._models)
        r.add_get("/v1/models/{model}", self._model)
        r.add_post("/v1/chat/completions", self._complete)
        r.add_get("/v1/characters", self._characters)
        r.add_delete("/v1/conversations/{conversation}", self._forget)
        add_health_routes(app, self.status, self.metrics)
        self.app = app

    # --- state ---------------------------------------------------------------------------------------
    async def warm_up(self) -> None:
        await self.engine.warm_up()
        self.ready = True

    def status(self) -> dict[str, Any]:
        backend, gate = self.engine.backend, self.engine.scheduler
        return {
            "ready": self.ready and bool(backend.ready),
            "backend_ready": bool(backend.ready),
            "backend_status": backend.status,
            # requests the local model is working on: 0 once a client that went away has been dropped
            "backend_active": getattr(backend, "active", None),
            "memory": self.engine.memory_status,
            "memory_store": self.engine.store.location,
            "queue_depth": gate.depth,
            "inflight": gate.inflight,
            "capacity": gate.capacity,
            "max_queue": gate.max_queue,
            "models": list(self.characters.by_id),
            "uptime_seconds": round(time.time() - self.started_at, 1),
        }

    def replied(self, reply: Reply, kind: str, seconds: float) -> None:
        """Count a delivered reply that took `seconds` from its request, waiting for a slot included."""
        self.metrics.replies.labels(kind).inc()
        self.metrics.tokens.inc(reply.completion_tokens)
        self.metrics.latency.observe(seconds)
        self._typical_seconds = 0.8 * self._typical_seconds + 0.2 * reply.seconds

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: about one reply's time."""
        return max(1, min(60, math.ceil(self._typical_seconds)))

    async def conversation_key(self, model_id: str, card: CharacterCard, conversation: str) -> str:
        """The memory key of a named conversation with one character (its id is chosen by the client, and
        the same id with another character is another conversation)."""
        key = _memory_key(model_id, conversation)
        if await self.engine.chosen_persona(key) != card.name:
            await self.engine.set_persona(key, card.name)
        return key

    # --- middleware ----------------------------------------------------------------------------------
    @web.middleware
    async def _errors(self, request: web.Request, handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except ApiError as exc:
            response = web.json_response(exc.body(), status=exc.status, headers=exc.headers)
        except web.HTTPException as exc:  # aiohttp's own: unknown route, wrong method
            if exc.status < 400:
                raise
            error = ApiError(exc.status, exc.reason, code="not_found" if exc.status == 404 else None)
            response = web.json_response(error.body(), status=exc.status, headers={k: v for k, v in exc.headers.items() if k == "Allow"})
        except Exception:
            log.exception("request %s %s failed", request.method, request.path)
            error = ApiError(500, "internal error; the server log has the details", type="server_error")
            response = web.json_response(error.body(), status=500)
        route = request.match_info.route.resource
        self.metrics.requests.labels(route.canonical if route is not None else "unmatched", str(response.status)).inc()
        return response

    @web.middleware
    async def _auth(self, request: web.Request, handler) -> web.StreamResponse:
        if self._key is not None and request.path.startswith("/v1/"):
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            # compared in constant time; neither key is ever logged
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._key):
                raise ApiError(401, "missing or wrong API key: send it as 'Authorization: Bearer <key>'",
                               code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    # --- routes --------------------------------------------------------------------------------------
    async def _page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(page_dir() / "index.html", headers=PAGE_HEADERS)

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in ASSETS:
            raise web.HTTPNotFound()
        return web.FileResponse(page_dir() / name, headers={"Content-Type": ASSETS[name], "X-Content-Type-Options": "nosniff"})

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        return await chat_completions(self, request)

    async def _models(self, request: web.Request) -> web.Response:
        created = int(self.started_at)
        return web.json_response({"object": "list", "data": [model_card(m, created) for m in self.characters.by_id]})

    async def _model(self, request: web.Request) -> web.Response:
        model_id, _ = self.characters.find(request.match_info["model"])
        return web.json_response(model_card(model_id, int(self.started_at)))

    async def _characters(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [self.characters.describe(m) for m in self.characters.by_id]})

    async def _forget(self, request: web.Request) -> web.Response:
        """Forget a named conversation, with every character (the page's reset)."""
        conversation = request.match_info["conversation"]
        try:
            forgotten = sum([await self.engine.reset(_memory_key(m, conversation)) for m in self.characters.by_id])
        except MemoryStoreError:
            raise ApiError(503, "conversation memory is unavailable; retry later", type="server_error", code="memory_unavailable") from None
        return web.json_response({"id": conversation, "object": "conversation.deleted", "deleted": True, "messages": forgotten})
