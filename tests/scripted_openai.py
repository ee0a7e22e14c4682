"""An OpenAI-compatible model server on loopback that answers from a script and keeps every request: the
model of bot *processes* (which cannot be handed a ScriptedBackend), so a test can see exactly which turns a
process put in its prompt. The real remote backend talks to it over HTTP."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from loopback import Loopback, listen


class ScriptedOpenAI(Loopback):
    def __init__(self, reply: str = "Aye."):
        self.reply = reply
        self.requests: list[dict[str, Any]] = []
        self.hold: asyncio.Event | None = None  # when set to an event, answers wait for it (a reply mid-generation)
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> ScriptedOpenAI:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner, self.port = await listen(app)
        return self

    async def __aexit__(self, *exc) -> None:
        await self._runner.cleanup()

    def prompts_with(self, text: str) -> list[list[str]]:
        """The message contents of every request whose last message contains `text`."""
        return [[m["content"] for m in r["messages"]] for r in self.requests if text in r["messages"][-1]["content"]]

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "scripted", "object": "model", "created": 0, "owned_by": "tests"}]})

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        if self.hold is not None:
            await self.hold.wait()
        return web.json_response({
            "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()), "model": "scripted",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.reply}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": len(self.reply.split()), "total_tokens": 1 + len(self.reply.split())},
        })
