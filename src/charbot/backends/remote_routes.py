"""The request each kind of prompt becomes, one route per kind of server API, all over one `openai` client.

- `ChatRoute`: chat messages to `/v1/chat/completions`. Own servers (vLLM, TGI's Messages API, llama.cpp's
  server, Ollama) apply the model's chat template; Hugging Face's router (`HF_ROUTER_URL`) passes the request to
  the provider named in the model, `org/model:provider`.
- `TextRoute`: raw text (DialoGPT-style prompts for base models) to `/v1/completions`.

There is no route for TGI's native `/generate`: TGI serves `/v1/completions` as well, so raw text reaches it the
same way as every other server, and Hugging Face's router serves chat completions only (raw text needs a server
of one's own; the backend says so at construction).
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from openai import AsyncOpenAI, AsyncStream

from charbot.backends.base import Completion, Prompt
from charbot.generation import GenerationSettings

HF_ROUTER_URL = "https://router.huggingface.co/v1"
MAX_STOPS = 4  # the OpenAI API (and servers copying it) reject more stop sequences
NOT_JSON = (json.JSONDecodeError, UnicodeDecodeError)
NO_TEXT = (AttributeError, IndexError, KeyError, TypeError)  # a 200 whose JSON is not shaped like a completion


class Malformed(Exception):
    """The server answered 200 with something that is not a completion."""


@dataclass
class Endpoint:
    """What every route of one backend shares."""

    client: AsyncOpenAI
    model: str  # as the server names it: `org/model:provider` on HF's router; an own server's is resolved in load()
    own_server: bool

    def params(self, settings: GenerationSettings) -> dict[str, Any]:
        sampling = settings.do_sample
        params: dict[str, Any] = {
            "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature if sampling else 0.0,
            "top_p": settings.top_p if sampling else 1.0,
        }
        if settings.seed is not None:
            params["seed"] = settings.seed
        if settings.stop:
            params["stop"] = list(settings.stop[:MAX_STOPS])
        # Own servers (vLLM, llama.cpp, TGI) take these beyond the OpenAI schema; HF's providers may reject them.
        extra: dict[str, Any] = {}
        if self.own_server and sampling and settings.top_k:
            extra["top_k"] = settings.top_k
        if self.own_server and settings.repetition_penalty != 1.0:
            extra["repetition_penalty"] = settings.repetition_penalty
        if self.own_server and settings.ignore_eos:
            extra["ignore_eos"] = True
        if extra:
            params["extra_body"] = extra
        return params


class Pieces:
    """A streamed reply, open: its text pieces as they come, then `close()` (which hangs up on an abandoned one)."""

    def __init__(self, chunks: AsyncStream[Any], piece_of: Callable[[Any], str | None]):
        self._chunks = chunks
        self._piece_of = piece_of

    def __aiter__(self) -> Pieces:
        return self

    async def __anext__(self) -> str:
        while True:
            try:
                chunk = await anext(self._chunks)
            except NOT_JSON as exc:
                raise Malformed(f"a streamed chunk is not JSON ({exc.__class__.__name__})") from exc
            choices = getattr(chunk, "choices", None)
            if not choices:  # e.g. a final usage-only chunk
                continue
            try:
                piece = self._piece_of(choices[0])
            except NO_TEXT as exc:
                raise Malformed("a streamed chunk has no text") from exc
            if piece:
                return piece

    async def close(self) -> None:
        await self._chunks.close()


class Route(abc.ABC):
    """One kind of request. Subclasses say how to send it and where the text is in the answer."""

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint

    @abc.abstractmethod
    async def _create(self, prompt: Prompt, settings: GenerationSettings, stream: bool) -> Any: ...

    @staticmethod
    @abc.abstractmethod
    def _text(choice: Any) -> str | None: ...

    @staticmethod
    @abc.abstractmethod
    def _piece(choice: Any) -> str | None: ...

    async def complete(self, prompt: Prompt, settings: GenerationSettings) -> Completion:
        """The whole reply; `completion_tokens` is 0 when the server did not count them."""
        try:
            out = await self._create(prompt, settings, stream=False)
        except NOT_JSON as exc:
            raise Malformed(f"not JSON ({exc.__class__.__name__})") from exc
        try:
            choice = out.choices[0]
            text, usage, finish = self._text(choice), out.usage, choice.finish_reason
        except NO_TEXT as exc:
            raise Malformed(f"no completion in it ({exc.__class__.__name__})") from exc
        if not isinstance(text, str):
            raise Malformed("the completion has no text")
        used, prompt_tokens = (usage.completion_tokens, usage.prompt_tokens) if usage else (0, 0)
        return Completion(text, used or 0, prompt_tokens or 0, finish or "stop")

    async def stream(self, prompt: Prompt, settings: GenerationSettings) -> Pieces:
        """The reply's stream, opened (the server has accepted the request); the caller closes it."""
        return Pieces(await self._create(prompt, settings, stream=True), self._piece)


class ChatRoute(Route):
    async def _create(self, prompt: Prompt, settings: GenerationSettings, stream: bool) -> Any:
        e = self.endpoint
        messages = [{"role": m.role, "content": m.content} for m in prompt.messages]
        return await e.client.chat.completions.create(model=e.model, messages=messages, stream=stream, **e.params(settings))

    @staticmethod
    def _text(choice: Any) -> str | None:
        return choice.message.content

    @staticmethod
    def _piece(choice: Any) -> str | None:
        return choice.delta.content


class TextRoute(Route):
    async def _create(self, prompt: Prompt, settings: GenerationSettings, stream: bool) -> Any:
        e = self.endpoint
        return await e.client.completions.create(model=e.model, prompt=prompt.text or "", stream=stream, **e.params(settings))

    @staticmethod
    def _text(choice: Any) -> str | None:
        return choice.text

    _piece = _text
