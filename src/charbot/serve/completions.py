"""`POST /v1/chat/completions`: one request, one engine call, answered whole or as server-sent events.

Without a conversation id the caller's messages are the conversation (`Engine.ask`: nothing remembered). With one
(`X-Conversation-Id`, or a string `user`) charbot's memory holds the history: only the new message is used and
the exchange is remembered once delivered (`Engine.reply`). A stream starts once the model has produced its first
text, so a full queue or a passed deadline is still an ordinary 429 or 503; a client that goes away cancels the
generation (the server cancels the handler, the backend drops the request).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from charbot.engine import Reply
from charbot.errors import BackendError, BackendUnavailable, BusyError
from charbot.generation import GenerationSettings
from charbot.memory import MemoryStoreError
from charbot.scheduler import QueueFull
from charbot.serve import openai_api as oa
from charbot.serve.openai_api import ApiError

if TYPE_CHECKING:
    from charbot.serve.app import ServeApp

log = logging.getLogger(__name__)


async def read_json(request: web.Request, limit: int) -> Any:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(400, f"the request body is larger than {limit} bytes (serve_max_body_bytes)", code="request_too_large") from None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError too
        raise ApiError(400, f"the request body is not valid JSON ({type(exc).__name__}: {str(exc)[:200]})", code="invalid_json") from None


class Whole:
    """A non-streamed answer: one chat.completion body."""

    on_update = None
    started = False

    def __init__(self, ids: oa.Ids, settings: GenerationSettings):
        self.ids, self.settings = ids, settings
        self.response: web.StreamResponse | None = None

    async def deliver(self, reply: Reply) -> None:
        self.response = web.json_response(oa.completion_body(self.ids, reply, self.settings))


class Events:
    """A streamed answer: the role, a content delta per update, the finish chunk (carrying the final text as
    `charbot.replaced` when clean-up changed what was streamed: a reply cut at the token cap ends at its last
    full sentence, an unusable one becomes the fallback), usage when asked for, then `[DONE]`."""

    def __init__(self, request: web.Request, ids: oa.Ids, settings: GenerationSettings, include_usage: bool, on_first):
        self.request, self.ids, self.settings, self.include_usage, self.on_first = request, ids, settings, include_usage, on_first
        self.response: web.StreamResponse | None = None
        self.sent = ""

    @property
    def started(self) -> bool:
        return self.response is not None

    async def _send(self, event: dict[str, Any]) -> None:
        await self.response.write(oa.sse(event))

    async def _start(self) -> None:
        self.response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                                    "X-Accel-Buffering": "no"})
        await self.response.prepare(self.request)
        await self._send(oa.chunk(self.ids, {"role": "assistant", "content": ""}))

    async def on_update(self, shown: str) -> None:
        if not self.started:
            await self._start()
            self.on_first()
        delta, self.sent = shown[len(self.sent):], shown  # the engine only ever extends what it showed
        await self._send(oa.chunk(self.ids, {"content": delta}))

    async def deliver(self, reply: Reply) -> None:
        if not self.started:
            await self._start()
        replaced = {}
        if reply.text.startswith(self.sent):
            if rest := reply.text[len(self.sent):]:
                await self._send(oa.chunk(self.ids, {"content": rest}))
        else:
            replaced["replaced"] = reply.text
        await self._send(oa.chunk(self.ids, {}, oa.finish_reason(reply, self.settings), **oa.charbot_extra(reply, **replaced)))
        if self.include_usage:
            await self._send({**self.ids.head("chat.completion.chunk"), "choices": [], "usage": oa.usage(reply)})
        await self.response.write(oa.SSE_DONE)
        await self.response.write_eof()

    async def fail(self, error: ApiError) -> None:
        """After the stream has begun the status is sent: the error goes as an event (OpenAI's clients raise it)."""
        await self._send(error.body())
        await self.response.write_eof()


def _refusal(api: ServeApp, exc: Exception) -> ApiError:
    if isinstance(exc, QueueFull):
        api.metrics.busy.labels("queue").inc()
        wait = api.retry_after()
        return ApiError(429, f"busy: {api.engine.scheduler.inflight} generations running and the queue is full; retry in {wait} s",
                        type="rate_limit_error", code="queue_full", headers={"Retry-After": str(wait)})
    if isinstance(exc, BusyError):  # DeadlineExceeded
        api.metrics.busy.labels("deadline").inc()
        return ApiError(503, "the request waited too long for a free generation slot; retry later", type="server_error",
                        code="queue_timeout", headers={"Retry-After": str(api.retry_after())})
    if isinstance(exc, MemoryStoreError):  # its text names server paths: the client gets what to do instead
        return ApiError(503, "conversation memory is unavailable; send the whole conversation without a conversation id",
                        type="server_error", code="memory_unavailable")
    if isinstance(exc, BackendUnavailable):
        return ApiError(503, str(exc), type="server_error", code="backend_unavailable")
    return ApiError(500, str(exc), type="server_error", code="generation_failed")


async def chat_completions(api: ServeApp, request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    body = oa.parse_request(await read_json(request, api.limits.max_body_bytes))
    model_id, card = api.characters.find(body.model)
    settings = oa.sampling(body, api.engine.settings, api.limits.max_tokens)
    history, text, speaker = oa.conversation(body.messages, card.name)
    named = oa.conversation_id(request.headers.get("X-Conversation-Id"), body)
    if not api.ready:
        raise ApiError(503, "the model is still loading; retry shortly", type="server_error", code="model_loading", headers={"Retry-After": "2"})
    ids = oa.Ids(model_id)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        answer: Whole | Events = Events(request, ids, settings, include_usage,
                                        on_first=lambda: api.metrics.first_token.observe(time.perf_counter() - started))
    else:
        answer = Whole(ids, settings)
    try:
        if named is None:
            reply = await api.engine.ask(text, speaker=speaker, persona=card, history=history, settings=settings, on_update=answer.on_update)
            await answer.deliver(reply)
        else:
            key = await api.conversation_key(model_id, card, named)
            reply = await api.engine.reply(key, text, speaker=speaker, settings=settings, on_update=answer.on_update, deliver=answer.deliver)
    except (asyncio.CancelledError, ConnectionResetError) as exc:
        api.metrics.cancelled.inc()  # the client went away: the generation was dropped with the handler
        if isinstance(exc, asyncio.CancelledError):
            raise
        return answer.response or web.Response()  # nobody is listening
    except (BusyError, BackendError, MemoryStoreError) as exc:
        error = _refusal(api, exc)
        if not answer.started:
            raise error from None
        log.warning("stream ended by an error: %s", error.message)
        await answer.fail(error)
        return answer.response
    api.replied(reply, "stream" if body.stream else "whole", time.perf_counter() - started)
    return answer.response
