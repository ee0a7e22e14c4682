"""The OpenAI chat API's shapes, mapped to and from the engine's: a request's messages become turns and its
sampling parameters a `GenerationSettings`; replies become `chat.completion` bodies and `chat.completion.chunk`
events; failures become `{"error": {message, type, code, param}}` bodies. No HTTP server code here."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from charbot.engine import Reply
from charbot.generation import GenerationSettings
from charbot.memory import Turn

MAX_STOPS = 32  # SillyTavern sends a stop string per participant and custom ones; OpenAI itself allows 4
CONVERSATION_ID_MAX = 128


class ApiError(Exception):
    """An answer other than 200, with OpenAI's error body. The message is for the client: never a traceback."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


# --- requests ------------------------------------------------------------------------------------------
class _Lenient(BaseModel):
    # OpenAI-compatible servers ignore what they do not know (logit_bias, tools, …): so does this one.
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Lenient):
    type: str
    text: str | None = None


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(None, max_length=64)

    def text(self) -> str:
        if isinstance(self.content, list):  # text parts kept, images and audio dropped
            return "\n".join(part.text for part in self.content if part.type == "text" and part.text)
        return self.content or ""


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatRequest(_Lenient):
    model: str | None = None  # empty: the default character
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)  # OpenAI's: a 64-bit integer
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1, le=1, description="one choice per request")
    user: Any = None  # a string names a conversation (see conversation_id); other shapes are ignored
    # Extensions vLLM and llama.cpp's server accept too.
    top_k: int | None = Field(None, ge=0, le=100_000)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    ignore_eos: bool = False

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else self.stop or []


def parse_request(raw: Any) -> ChatRequest:
    if not isinstance(raw, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_body")
    try:
        request = ChatRequest.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise ApiError(400, f"{where}: {err['msg']}", code="invalid_value", param=where) from None
    if len(request.stops()) > MAX_STOPS:
        raise ApiError(400, f"stop: at most {MAX_STOPS} strings", code="invalid_value", param="stop")
    return request


def sampling(request: ChatRequest, base: GenerationSettings, max_tokens: int) -> GenerationSettings:
    """The request's sampling over the server's defaults; max_tokens capped at `max_tokens`. Temperature 0
    (or top_p 0) means greedy decoding, as OpenAI's servers treat it."""
    wanted = request.max_completion_tokens or request.max_tokens or base.max_new_tokens
    changes: dict[str, Any] = {"max_new_tokens": min(wanted, max_tokens)}
    if request.temperature == 0:
        changes["do_sample"] = False
    elif request.temperature is not None:
        changes.update(temperature=request.temperature, do_sample=True)
    if request.top_p == 0:
        changes["do_sample"] = False
    elif request.top_p is not None:
        changes["top_p"] = request.top_p
    for name in ("top_k", "repetition_penalty", "seed"):
        if getattr(request, name) is not None:
            changes[name] = getattr(request, name)
    changes["stop"] = tuple(dict.fromkeys([*base.stop, *(s for s in request.stops() if s)]))
    changes["ignore_eos"] = request.ignore_eos
    return base.but(**changes)


def conversation(messages: list[ChatMessage], character: str) -> tuple[list[Turn], str, str | None]:
    """(history, the new message, its speaker). System and developer messages are left out: the character's
    card is the system prompt (a front-end's own, e.g. SillyTavern's, describes a character of its own).
    Tool messages are left out too. The last message left must be the user's."""
    turns = [
        Turn(m.role, m.text(), m.name or (character if m.role == "assistant" else None))
        for m in messages if m.role in ("user", "assistant")
    ]
    if not turns or turns[-1].role != "user":
        raise ApiError(400, "messages: the last message (system messages aside) must be the user's", code="invalid_value", param="messages")
    last = turns.pop()
    return turns, last.content, last.speaker


def conversation_id(header: str | None, request: ChatRequest) -> str | None:
    """The caller's conversation, when it names one: the X-Conversation-Id header, else a string `user`."""
    named = header if header is not None else request.user if isinstance(request.user, str) else None
    if named is None or not named.strip():
        return None
    if len(named) > CONVERSATION_ID_MAX or not named.isprintable():
        raise ApiError(400, f"conversation id: at most {CONVERSATION_ID_MAX} printable characters", code="invalid_value", param="user")
    return named.strip()


# --- responses -----------------------------------------------------------------------------------------
class Ids:
    """The id and creation time one completion's body or chunks share."""

    def __init__(self, model: str):
        self.id = f"chatcmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.model = model

    def head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "system_fingerprint": None}


def finish_reason(reply: Reply, settings: GenerationSettings) -> str:
    return "length" if reply.completion_tokens >= settings.max_new_tokens and not reply.fallback else "stop"


def usage(reply: Reply) -> dict[str, int]:
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens}


def completion_body(ids: Ids, reply: Reply, settings: GenerationSettings) -> dict[str, Any]:
    message = {"role": "assistant", "content": reply.text}
    choice = {"index": 0, "message": message, "finish_reason": finish_reason(reply, settings), "logprobs": None}
    return {**ids.head("chat.completion"), "choices": [choice], "usage": usage(reply), **charbot_extra(reply)}


def charbot_extra(reply: Reply, **more: Any) -> dict[str, Any]:
    """charbot's own fields, under one key that OpenAI clients ignore: the lorebook entries the reply's
    prompt held (the page lists them), and whatever else the caller adds."""
    fields = {**({"lorebook": list(reply.lore)} if reply.lore else {}), **more}
    return {"charbot": fields} if fields else {}


def chunk(ids: Ids, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {**ids.head("chat.completion.chunk"), "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}


def sse(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event, ensure_ascii=False).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def model_card(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "charbot"}
