"""Hosted and self-hosted inference: Hugging Face Inference Providers (through the router's OpenAI-compatible
API), or any OpenAI-compatible server (vLLM, TGI, llama.cpp's server, Ollama).

One `openai.AsyncOpenAI` client per backend, for its lifetime; the routes (remote_routes.py) are chosen at
construction and picked per prompt kind. Retries (429/5xx "loading"/connection errors) are one tenacity policy
(remote_errors.py), waiting what the server asks for (Retry-After, HF's `estimated_time`), all inside one deadline
of `remote_timeout` seconds per request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from openai import APIStatusError, AsyncOpenAI, Omit
from pydantic import SecretStr
from tenacity import RetryCallState
from tenacity.wait import wait_exponential_jitter

from charbot.backends.base import Backend, Completion, Message, Prompt
from charbot.backends.remote_errors import ErrorContext, explain, is_transient, retry_policy, short_reason
from charbot.backends.remote_routes import HF_ROUTER_URL, ChatRoute, Endpoint, Pieces, Route, TextRoute
from charbot.config import secret
from charbot.errors import CharbotError, ConfigError
from charbot.generation import GenerationSettings

log = logging.getLogger(__name__)

DEFAULT_HF_MODEL = "HuggingFaceTB/SmolLM3-3B"
FALLBACK_SERVED_MODEL = "default"  # llama.cpp server and TGI accept any name when they serve one model
WARMUP_TEXT = "Hello"
# The client would otherwise send OPENAI_ORG_ID / OPENAI_PROJECT_ID from the environment to servers not OpenAI's.
NO_OPENAI_ACCOUNT = {"OpenAI-Organization": Omit(), "OpenAI-Project": Omit()}

T = TypeVar("T")


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


def api_url(base_url: str) -> str:
    """The URL the OpenAI routes hang off: a bare `http://host:port` means its `/v1` (TGI, vLLM, Ollama)."""
    parts = urlsplit(base_url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") or "/v1"))


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
        self.base_url = api_url(base_url) if base_url else None
        self.provider = provider
        self.token = token
        self.token_env = token_env or ("OPENAI_API_KEY" if base_url else "HF_TOKEN")
        self.timeout = timeout
        self.max_retries = max_retries
        self.context_window = context_window
        # A base model behind the server may have no chat template: then even the warm-up must be raw text.
        self.default_prompt_format = "dialogpt" if prompt_format == "dialogpt" else "chat"
        if self.base_url is None and self.default_prompt_format == "dialogpt":
            raise ConfigError(
                "prompt_format dialogpt sends raw text to /v1/completions, which Hugging Face's router does not serve (chat completions only)",
                "use a chat model with prompt_format chat, or --base-url for a server of your own (vLLM, TGI, llama.cpp all serve /v1/completions)",
            )
        self._backoff = wait_exponential_jitter(multiplier=backoff_initial, max=backoff_max, jitter=backoff_initial)
        if self.base_url is None:
            self.model_id, suffix = split_provider(model or DEFAULT_HF_MODEL)
            self.provider = provider or suffix
            # No suffix, or "auto": the router picks the provider.
            served = self.model_id if self.provider in (None, "auto") else f"{self.model_id}:{self.provider}"
        else:
            served = self.model_id = model or ""  # empty: the server's first model, asked for in load()
        url = self.base_url or HF_ROUTER_URL
        self.where = redact_url(url)
        key = self.token.get_secret_value() if self.token is not None else None
        # An explicit key always: left out, the client would send OPENAI_API_KEY from the environment to this server.
        # max_retries=0: retrying is ours (one policy, honouring estimated_time too).
        client = AsyncOpenAI(base_url=url, api_key=key or "EMPTY", timeout=timeout, max_retries=0, default_headers=NO_OPENAI_ACCOUNT)
        self.endpoint = Endpoint(client, served, own_server=self.base_url is not None)
        self._chat: Route = ChatRoute(self.endpoint)
        self._text: Route = TextRoute(self.endpoint)
        self._errors = ErrorContext(self.where, self.base_url is None, self.token_env, timeout, key)
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

    def _route(self, prompt: Prompt) -> Route:
        return self._chat if prompt.is_chat else self._text

    # --- readiness -----------------------------------------------------------------------------------
    async def load(self) -> None:
        """Resolve the model name and send the tutorial's warm-up "Hello", retrying while the model loads."""
        self.status = f"connecting to {self.where}"
        warm = GenerationSettings(max_new_tokens=1, do_sample=False, no_repeat_ngram_size=0)
        hello = Prompt(text=WARMUP_TEXT) if self.default_prompt_format == "dialogpt" else Prompt(messages=(Message("user", WARMUP_TEXT),))

        async def warm_up() -> Completion:
            if not self.model_id:
                self.model_id = self.endpoint.model = await self._served_model()
            return await self._route(hello).complete(hello, warm)

        await self._retrying(warm_up)

    async def _served_model(self) -> str:
        """The first model an OpenAI-compatible server lists at /models (vLLM needs the exact name)."""
        try:
            page = await self.endpoint.client.models.list()
            return str(page.data[0].id)
        except APIStatusError as exc:
            if is_transient(exc) or exc.status_code in (401, 403):
                raise  # retried, or reported as a bad key
        except (ValueError, AttributeError, IndexError, TypeError):
            pass
        return FALLBACK_SERVED_MODEL  # TGI-style servers without /models serve one model under any name

    def _succeeded(self) -> None:
        if not self.ready:
            log.info("remote backend ready: %s at %s", self.model_id, self.where)
        self.ready = True
        self.status = "ready"

    def _fail(self, exc: BaseException, started: float, mid_reply: bool = False) -> CharbotError:
        error = explain(exc, self._errors, model=self.model_id, elapsed=time.monotonic() - started, mid_reply=mid_reply)
        # `ready` stays as it was: one failed request after the first success does not make us "not ready".
        self.status = f"unavailable: {error}" if not self.ready else f"ready (last request failed: {error})"
        return error

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        reason = short_reason(exc) if exc is not None else "error"
        wait = state.upcoming_sleep
        if not self.ready:
            self.status = f"waiting for {self.where}: {reason}; retry {state.attempt_number}/{self.max_retries} in {wait:.1f}s"
        log.warning("remote %s: %s; retrying in %.1fs (%d/%d)", self.where, reason, wait, state.attempt_number, self.max_retries)

    # --- requests ------------------------------------------------------------------------------------
    async def _retrying(self, once: Callable[[], Awaitable[T]]) -> T:
        """Run `once` with retries on transient failures, the whole thing within `timeout` seconds."""
        started = time.monotonic()
        policy = retry_policy(max_retries=self.max_retries, timeout=self.timeout, backoff=self._backoff, before_sleep=self._before_sleep)
        try:
            async with asyncio.timeout(self.timeout):
                async for attempt in policy:
                    with attempt:
                        result = await once()
        except Exception as exc:
            raise self._fail(exc, started) from None
        self._succeeded()
        return result

    async def complete(self, prompt: Prompt, settings: GenerationSettings) -> Completion:
        route = self._route(prompt)
        completion = await self._retrying(lambda: route.complete(prompt, settings))
        if completion.completion_tokens:
            return completion
        return dataclasses.replace(completion, completion_tokens=self.count_tokens(completion.text))

    async def stream(self, prompt: Prompt, settings: GenerationSettings) -> AsyncIterator[str]:
        """Pieces as the server sends them. Retries happen only before the first piece: after that a
        failure is reported, since the user has already seen part of the reply."""
        started = time.monotonic()
        deadline = asyncio.get_running_loop().time() + self.timeout
        route = self._route(prompt)
        pieces = await self._retrying(lambda: route.stream(prompt, settings))
        try:
            while (piece := await self._next_piece(pieces, deadline, started)) is not None:
                yield piece
        finally:
            await pieces.close()  # also when the consumer stops early: the server stops generating

    async def _next_piece(self, pieces: Pieces, deadline: float, started: float) -> str | None:
        try:
            async with asyncio.timeout_at(deadline):
                return await anext(pieces)
        except StopAsyncIteration:
            return None
        except Exception as exc:
            raise self._fail(exc, started, mid_reply=True) from None

    async def aclose(self) -> None:
        await self.endpoint.client.close()
        self.ready = False
        self.status = "closed"

    def describe(self) -> str:
        return f"remote:{self.model_id or '?'}@{self.where}"
