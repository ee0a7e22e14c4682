"""Hosted and self-hosted inference: Hugging Face Inference Providers, or any OpenAI-compatible server
(vLLM, TGI's Messages API, llama.cpp's server, Ollama) through `huggingface_hub.AsyncInferenceClient`.

One gap in AsyncInferenceClient: for a custom URL its `text_generation` posts TGI's native
`{"inputs": ..., "parameters": ...}` body to the URL itself, so raw-text (DialoGPT-style) prompts cannot reach
an OpenAI-style `/v1/completions` route. Only that case goes through the `openai` client; chat, and raw text
on TGI-native URLs and HF providers, stay on AsyncInferenceClient.

Retries (429/5xx "loading"/connection errors) are one tenacity policy for both clients, waiting what the server
asks for (Retry-After, HF's `estimated_time`), all inside one deadline of `remote_timeout` seconds per request.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx2
from huggingface_hub import AsyncInferenceClient, InferenceTimeoutError
from pydantic import SecretStr
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_before_delay
from tenacity.wait import wait_base, wait_exponential_jitter

from charbot.backends.base import Backend, Completion, Message, Prompt
from charbot.config import secret
from charbot.errors import BackendError, BackendUnavailable, CharbotError, ConfigError
from charbot.generation import GenerationSettings

log = logging.getLogger(__name__)

HF_ROUTER_URL = "https://router.huggingface.co/v1"
RETIRED_HOST = "api-inference.huggingface.co"
DEFAULT_HF_MODEL = "HuggingFaceTB/SmolLM3-3B"
FALLBACK_SERVED_MODEL = "default"  # llama.cpp server and TGI accept any name when they serve one model
RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_STOPS = 4  # the OpenAI API (and servers copying it) reject more stop sequences
MAX_SERVER_WAIT = 120.0
WARMUP_TEXT = "Hello"
# AsyncInferenceClient keeps a handle on every streamed response until the client closes: streams share a
# client that is replaced after this many, and closed once its last stream ends. (A client per stream costs
# ~20 ms of SSL-context setup; one forever grows without bound.)
STREAMS_PER_CLIENT = 256

T = TypeVar("T")


class _Malformed(Exception):
    """The server answered 200 with something that is not a completion."""


def redact_url(url: str) -> str:
    """A URL safe for messages and logs: no user:password@, no query string (some proxies take keys there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def split_provider(model: str) -> tuple[str, str | None]:
    """`org/model:provider` (the router's naming) → (`org/model`, `provider`)."""
    name, sep, provider = model.rpartition(":")
    if sep and name and provider and "/" not in provider:
        return name, provider
    return model, None


# --- reading failures from either client ------------------------------------------------------------
def _response_of(exc: BaseException):
    response = getattr(exc, "response", None)
    return response if isinstance(response, httpx2.Response) else None


def status_of(exc: BaseException) -> int | None:
    code = getattr(exc, "status_code", None)  # openai.APIStatusError
    if isinstance(code, int):
        return code
    response = _response_of(exc)
    return response.status_code if response is not None else None


def _body_of(exc: BaseException) -> Any:
    response = _response_of(exc)
    if response is None:
        return None
    try:
        text = response.text
    except httpx2.ResponseNotRead:  # a failed streaming request: the body was never read
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, httpx2.TransportError) and not isinstance(exc, httpx2.TimeoutException):
        return True
    return type(exc).__name__ == "APIConnectionError"  # openai's, without importing openai


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, (TimeoutError, InferenceTimeoutError, httpx2.TimeoutException)) or type(exc).__name__ == "APITimeoutError"


def server_wait(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait: Retry-After (seconds or HTTP date), or HF's `estimated_time`."""
    response = _response_of(exc)
    if response is not None:
        value = response.headers.get("retry-after")
        if value:
            try:
                return max(0.0, float(value))
            except ValueError:
                pass
            try:
                return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError):
                pass  # unparseable: fall back to our own backoff
    body = _body_of(exc)
    if isinstance(body, dict):
        estimated = body.get("estimated_time")
        if estimated is None and isinstance(body.get("error"), dict):
            estimated = body["error"].get("estimated_time")
        if isinstance(estimated, (int, float)):
            return max(0.0, float(estimated))
    return None


def _server_says(exc: BaseException, limit: int = 160) -> str:
    """The server's own short error text, when it gave one."""
    body = _body_of(exc)
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body.get("message")))
        if isinstance(error, dict):
            error = error.get("message") or error.get("error")
        body = error
    if not isinstance(body, str):
        return ""
    text = " ".join(body.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_transient(exc: BaseException) -> bool:
    return status_of(exc) in RETRY_STATUSES or _is_connection_error(exc)


class _ServerWait(wait_base):
    """Wait what the server asked for; otherwise exponential backoff with jitter."""

    def __init__(self, fallback: wait_base):
        self.fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        hint = server_wait(exc) if exc is not None else None
        if hint is not None:
            return min(hint, MAX_SERVER_WAIT)
        return self.fallback(retry_state)


class RemoteBackend(Backend):
    name = "remote"
    default_parallel = 8

    def __init__(
        self,
        *,
        base_url: str | None = None,
        model: str | None = None,
        provider: str | None = None,
        token: SecretStr | None = None,
        token_env: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 4,
        context_window: int = 2048,
        backoff_initial: float = 0.5,
        backoff_max: float = 8.0,
        prompt_format: str = "auto",
        parallel: int = 8,
    ):
        self.parallel = parallel
        self.base_url = base_url.rstrip("/") if base_url else None
        self.provider = provider
        self.token = token
        self.token_env = token_env or ("OPENAI_API_KEY" if base_url else "HF_TOKEN")
        self.timeout = timeout
        self.max_retries = max_retries
        self.context_window = context_window
        # A base model behind the server may have no chat template: then even the warm-up must be raw text.
        self.default_prompt_format = "dialogpt" if prompt_format == "dialogpt" else "chat"
        self._backoff = wait_exponential_jitter(multiplier=backoff_initial, max=backoff_max, jitter=backoff_initial)
        if self.base_url is None:
            name, suffix = split_provider(model or DEFAULT_HF_MODEL)
            self.provider = provider or suffix
            self.model_id = name
        else:
            self.model_id = model or ""  # empty: the server's first model, asked for in load()
        self.where = redact_url(self.base_url or HF_ROUTER_URL)
        # Raw text on an OpenAI-compatible server needs /v1/completions, which only the openai client speaks.
        self._openai_text = self.base_url is not None and urlsplit(self.base_url).path.rstrip("/").endswith("/v1")
        self._client: AsyncInferenceClient | None = None
        self._openai = None
        self._streamer: AsyncInferenceClient | None = None
        self._streamer_uses = 0
        self._streams_open: dict[AsyncInferenceClient, int] = {}
        self.ready = False
        self.status = "not started"

    @classmethod
    def from_settings(cls, settings) -> RemoteBackend:
        r = settings.remote
        if r.base_url:
            token = secret(r.api_key_env)
            token_env = r.api_key_env
        else:
            token = secret(r.hf_token_env, "HUGGINGFACE_TOKEN")
            token_env = r.hf_token_env
            if token is None:
                raise ConfigError(
                    f"the remote backend without a base URL uses Hugging Face Inference Providers and needs a token, but {token_env} is not set",
                    f"export {token_env}=hf_... (a token with 'Inference Providers' permission), or pass --base-url for your own server",
                )
        return cls(
            base_url=r.base_url,
            model=settings.model,
            provider=r.provider,
            token=token,
            token_env=token_env,
            timeout=r.timeout,
            max_retries=r.max_retries,
            context_window=settings.context_window,
            prompt_format=settings.prompt_format,
            parallel=settings.parallel or cls.default_parallel,
        )

    # --- clients -------------------------------------------------------------------------------------
    def _secret(self) -> str | None:
        return self.token.get_secret_value() if self.token is not None else None

    def _new_client(self) -> AsyncInferenceClient:
        if self.base_url is not None:
            return AsyncInferenceClient(base_url=self.base_url, api_key=self._secret(), timeout=self.timeout)
        return AsyncInferenceClient(provider=self.provider, api_key=self._secret(), timeout=self.timeout)  # type: ignore[arg-type]

    @property
    def client(self) -> AsyncInferenceClient:
        if self._client is None:
            self._client = self._new_client()
        return self._client

    @property
    def openai(self):
        if self._openai is None:
            from openai import AsyncOpenAI

            # max_retries=0: retries are ours (one policy for both clients, honouring estimated_time too).
            self._openai = AsyncOpenAI(base_url=self.base_url, api_key=self._secret() or "EMPTY", timeout=self.timeout, max_retries=0)
        return self._openai

    async def _checkout_streamer(self) -> AsyncInferenceClient:
        if self._streamer is None or self._streamer_uses >= STREAMS_PER_CLIENT:
            retired, self._streamer, self._streamer_uses = self._streamer, self._new_client(), 0
            if retired is not None and self._streams_open.get(retired) == 0:
                del self._streams_open[retired]
                await retired.close()
        self._streamer_uses += 1
        self._streams_open[self._streamer] = self._streams_open.get(self._streamer, 0) + 1
        return self._streamer

    async def _checkin_streamer(self, client: AsyncInferenceClient) -> None:
        self._streams_open[client] -= 1
        if self._streams_open[client] == 0 and client is not self._streamer:
            del self._streams_open[client]
            await client.close()

    async def _close_clients(self) -> None:
        clients = {c for c in (self._client, self._streamer, *self._streams_open) if c is not None}
        self._client = self._streamer = None
        self._streams_open.clear()
        oai, self._openai = self._openai, None
        for client in clients:
            await client.close()
        if oai is not None:
            await oai.close()

    # --- readiness -----------------------------------------------------------------------------------
    async def load(self) -> None:
        """Resolve the model name and send the tutorial's warm-up "Hello", retrying while the model loads."""
        self.status = f"connecting to {self.where}"
        warm = GenerationSettings(max_new_tokens=1, do_sample=False, no_repeat_ngram_size=0)

        async def warm_up() -> Completion:
            if not self.model_id:
                self.model_id = await self._served_model()
            if self.default_prompt_format == "dialogpt":
                return await self._complete_once(Prompt(text=WARMUP_TEXT), warm)
            return await self._complete_once(Prompt(messages=(Message("user", WARMUP_TEXT),)), warm)

        await self._retrying(warm_up)

    async def _served_model(self) -> str:
        """The first model an OpenAI-compatible server lists at /models (vLLM needs the exact name)."""
        headers = {"Authorization": f"Bearer {self._secret()}"} if self.token else {}
        async with httpx2.AsyncClient(timeout=self.timeout) as http:
            response = await http.get(f"{self.base_url}/models", headers=headers)
        if response.status_code in RETRY_STATUSES or response.status_code in (401, 403):
            response.raise_for_status()  # retried, or reported as a bad key
        try:
            data = response.json()["data"]
            return str(data[0]["id"])
        except (ValueError, KeyError, IndexError, TypeError):
            return FALLBACK_SERVED_MODEL  # TGI-style servers without /models serve one model under any name

    def _succeeded(self) -> None:
        if not self.ready:
            log.info("remote backend ready: %s at %s", self.model_id, self.where)
        self.ready = True
        self.status = "ready"

    def _failed(self, error: CharbotError) -> None:
        # `ready` stays as it was: one failed request after the first success does not make us "not ready".
        self.status = f"unavailable: {error}" if not self.ready else f"ready (last request failed: {error})"

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        reason = _short_reason(exc) if exc is not None else "error"
        wait = state.upcoming_sleep
        if not self.ready:
            self.status = f"waiting for {self.where}: {reason}; retry {state.attempt_number}/{self.max_retries} in {wait:.1f}s"
        log.warning("remote %s: %s; retrying in %.1fs (%d/%d)", self.where, reason, wait, state.attempt_number, self.max_retries)

    # --- requests ------------------------------------------------------------------------------------
    async def _retrying(self, once: Callable[[], Awaitable[T]]) -> T:
        """Run `once` with retries on transient failures, the whole thing within `timeout` seconds."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                async for attempt in AsyncRetrying(
                    retry=retry_if_exception(is_transient),
                    wait=_ServerWait(self._backoff),
                    stop=stop_after_attempt(self.max_retries + 1) | stop_before_delay(self.timeout),
                    before_sleep=self._before_sleep,
                    reraise=True,
                ):
                    with attempt:
                        result = await once()
        except Exception as exc:
            error = self._translate(exc, time.monotonic() - started)
            self._failed(error)
            raise error from None
        self._succeeded()
        return result

    def _params(self, settings: GenerationSettings) -> dict[str, Any]:
        params: dict[str, Any] = {
            "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature if settings.do_sample else 0.0,
            "top_p": settings.top_p if settings.do_sample else 1.0,
            "seed": settings.seed,
            "stop": list(settings.stop[:MAX_STOPS]) or None,
        }
        return {k: v for k, v in params.items() if v is not None}

    def _extra(self, settings: GenerationSettings) -> dict[str, Any] | None:
        # Own servers (vLLM, llama.cpp, TGI) take these beyond the OpenAI schema; HF providers may reject them.
        if self.base_url is None:
            return None
        extra: dict[str, Any] = {}
        if settings.do_sample and settings.top_k:
            extra["top_k"] = settings.top_k
        if settings.repetition_penalty != 1.0:
            extra["repetition_penalty"] = settings.repetition_penalty
        return extra or None

    async def _complete_once(self, prompt: Prompt, settings: GenerationSettings) -> Completion:
        try:
            if prompt.is_chat:
                out = await self.client.chat_completion(
                    [{"role": m.role, "content": m.content} for m in prompt.messages],
                    model=self.model_id, extra_body=self._extra(settings), **self._params(settings),
                )
                choice = out.choices[0]
                text = choice.message.content
                usage = out.usage
                counts = (usage.completion_tokens, usage.prompt_tokens) if usage else (0, 0)
                finish = choice.finish_reason
            elif self._openai_text:
                out = await self.openai.completions.create(
                    model=self.model_id, prompt=prompt.text, extra_body=self._extra(settings), **self._params(settings)
                )
                choice = out.choices[0]
                text, finish = choice.text, choice.finish_reason
                counts = (out.usage.completion_tokens, out.usage.prompt_tokens) if out.usage else (0, 0)
            else:
                text = await self.client.text_generation(prompt.text or "", **self._tgi_params(settings))
                counts, finish = (0, 0), "stop"
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _Malformed(f"not JSON ({exc.__class__.__name__})") from exc
        except (AttributeError, IndexError, KeyError, TypeError) as exc:
            raise _Malformed(f"no completion in it ({exc.__class__.__name__})") from exc
        if not isinstance(text, str):
            raise _Malformed("the completion has no text")
        return Completion(text, counts[0] or self.count_tokens(text), counts[1] or 0, finish or "stop")

    def _tgi_params(self, settings: GenerationSettings) -> dict[str, Any]:
        params: dict[str, Any] = {
            "max_new_tokens": settings.max_new_tokens,
            "do_sample": settings.do_sample,
            "temperature": settings.temperature if settings.do_sample and settings.temperature > 0 else None,
            "top_k": settings.top_k if settings.do_sample and settings.top_k else None,
            "top_p": settings.top_p if settings.do_sample and settings.top_p < 1.0 else None,
            "repetition_penalty": settings.repetition_penalty if settings.repetition_penalty != 1.0 else None,
            "seed": settings.seed,
            "stop": list(settings.stop) or None,
        }
        if self.base_url is None:
            params["model"] = self.model_id  # with a URL the client posts to the URL itself
        return {k: v for k, v in params.items() if v is not None}

    async def complete(self, prompt: Prompt, settings: GenerationSettings) -> Completion:
        return await self._retrying(lambda: self._complete_once(prompt, settings))

    async def _open_stream(self, prompt: Prompt, settings: GenerationSettings, client: AsyncInferenceClient) -> AsyncIterator[Any]:
        if prompt.is_chat:
            return await client.chat_completion(
                [{"role": m.role, "content": m.content} for m in prompt.messages],
                model=self.model_id, stream=True, extra_body=self._extra(settings), **self._params(settings),
            )
        if self._openai_text:
            return await self.openai.completions.create(
                model=self.model_id, prompt=prompt.text, stream=True, extra_body=self._extra(settings), **self._params(settings)
            )
        return await client.text_generation(prompt.text or "", stream=True, **self._tgi_params(settings))

    @staticmethod
    def _piece(chunk: Any) -> str | None:
        if isinstance(chunk, str):  # TGI-native text_generation streams plain token strings
            return chunk
        choices = getattr(chunk, "choices", None)
        if not choices:  # e.g. a final usage-only chunk
            return None
        choice = choices[0]
        delta = getattr(choice, "delta", None)
        return getattr(delta, "content", None) if delta is not None else getattr(choice, "text", None)

    async def stream(self, prompt: Prompt, settings: GenerationSettings) -> AsyncIterator[str]:
        """Pieces as the server sends them. Retries happen only before the first piece: after that a
        failure is reported, since the user has already seen part of the reply."""
        started = time.monotonic()
        deadline = asyncio.get_running_loop().time() + self.timeout
        client = await self._checkout_streamer()
        chunks = None
        try:
            chunks = await self._retrying(lambda: self._open_stream(prompt, settings, client))
            async for piece in self._pieces(chunks, deadline, started):
                yield piece
        finally:
            close = getattr(chunks, "close", None)  # openai's AsyncStream
            if close is not None:
                await close()
            await self._checkin_streamer(client)

    async def _pieces(self, chunks: Any, deadline: float, started: float) -> AsyncIterator[str]:
        iterator = aiter(chunks)
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await anext(iterator)
                except StopAsyncIteration:
                    break
                try:
                    piece = self._piece(chunk)
                except (AttributeError, IndexError, TypeError) as exc:
                    raise _Malformed("a streamed chunk has no text") from exc
                if piece:
                    yield piece
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            await self._abort_stream(_Malformed(f"a streamed chunk is not JSON ({exc.__class__.__name__})"), started)
        except Exception as exc:
            await self._abort_stream(exc, started)

    async def _abort_stream(self, exc: BaseException, started: float) -> None:
        error = self._translate(exc, time.monotonic() - started, mid_reply=True)
        self._failed(error)
        raise error from None

    # --- errors --------------------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        secret = self._secret()
        return text.replace(secret, "***") if secret else text

    def _translate(self, exc: BaseException, elapsed: float, mid_reply: bool = False) -> CharbotError:
        """Any failure → one line saying what happened and how to fix it. Never contains the token."""
        error = self._classify(exc, elapsed, mid_reply)
        error.what = self._scrub(error.what)
        error.fix = self._scrub(error.fix) if error.fix else error.fix
        return error

    def _classify(self, exc: BaseException, elapsed: float, mid_reply: bool) -> CharbotError:
        where = self.where
        model = self.model_id or "(server default)"
        if isinstance(exc, CharbotError):
            return exc
        if isinstance(exc, _Malformed):
            return BackendError(f"malformed response from {where}: {exc}", "check that base_url points at an OpenAI-compatible /v1 API (or a proxy that passes it through)")
        status = status_of(exc)
        said = _server_says(exc)
        said_part = f": {said}" if said else ""
        if status in (401, 403):
            return BackendError(
                f"{where} rejected the credentials (HTTP {status}){said_part}",
                f"set {self.token_env} to a valid {'Hugging Face token' if self.base_url is None else 'API key'} (setting {'hf_token_env' if self.base_url is None else 'api_key_env'} names the variable)",
            )
        if status == 404:
            if self.base_url is None:
                fix = "check --model / CHARBOT_MODEL: the model must be served by an Inference Provider (huggingface.co/models?inference_provider=all)"
            else:
                fix = "check --model / CHARBOT_MODEL against the server's /v1/models, and that base_url ends in /v1"
            return BackendError(f"model '{model}' not found at {where} (HTTP 404){said_part}", fix)
        if status == 410:
            return BackendError(
                f"{where} answered 410 Gone: the old serverless API ({RETIRED_HOST}) was retired",
                f"leave base_url empty to use Hugging Face Inference Providers ({HF_ROUTER_URL}) or point it at your own server",
            )
        if status in RETRY_STATUSES:
            wait = server_wait(exc)
            hint = f" (server estimates {wait:.0f}s more)" if wait else ""
            what = "rate-limited" if status == 429 else "busy or still loading the model"
            gave_up = f"; gave up after {elapsed:.1f}s" if elapsed >= 0.1 else f"; not waiting past remote_timeout={self.timeout:g}s"
            return BackendUnavailable(
                f"{where} is {what} (HTTP {status}){hint}{said_part}{gave_up}",
                "try again shortly, or raise remote_timeout / remote_max_retries",
            )
        if status is not None:
            error_cls = BackendUnavailable if status >= 500 else BackendError
            return error_cls(f"{where} answered HTTP {status}{said_part}", "check the server's log; the request parameters or model may not be supported")
        if _is_timeout(exc):
            return BackendUnavailable(f"no reply from {where} within {self.timeout:g}s", "raise remote_timeout (CHARBOT_REMOTE_TIMEOUT) or check the server's load")
        if _is_connection_error(exc) and mid_reply:
            return BackendUnavailable(f"{where} dropped the connection in the middle of a reply", "try again; check the server's log if it keeps happening")
        if _is_connection_error(exc):
            return BackendUnavailable(f"cannot reach {where} ({_short_reason(exc)})", "check that the server is running and base_url is right")
        if isinstance(exc, ValueError):  # the client refusing a configuration, e.g. an unknown provider
            return BackendError(f"remote backend: {' '.join(str(exc).split())[:200]}", "check model, provider and base_url settings")
        log.exception("unexpected remote failure")
        return BackendError(f"remote request to {where} failed ({exc.__class__.__name__})", "see the log for details")

    async def aclose(self) -> None:
        await self._close_clients()
        self.ready = False
        self.status = "closed"

    def describe(self) -> str:
        return f"remote:{self.model_id or '?'}@{self.where}"


def _short_reason(exc: BaseException) -> str:
    status = status_of(exc)
    if status is not None:
        return f"HTTP {status}"
    if _is_timeout(exc):
        return "timed out"
    name = exc.__class__.__name__
    return {"ConnectError": "connection refused", "RemoteProtocolError": "connection dropped", "ReadError": "connection dropped"}.get(name, name)
