"""What a failed remote request means: whether to retry it (and after how long), and the one line that tells the
user what happened and how to fix it.

Failures are the `openai` client's exceptions (`max_retries=0` there: retrying is ours, one tenacity policy that
also honours HF's `estimated_time`), asyncio's TimeoutError for our own deadline, and the routes' `Malformed`.
"""

from __future__ import annotations

import email.utils
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from openai import APIConnectionError, APIError, APIStatusError, APITimeoutError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_before_delay
from tenacity.wait import wait_base

from charbot.backends.remote_routes import HF_ROUTER_URL, Malformed
from charbot.errors import BackendError, BackendUnavailable, CharbotError

log = logging.getLogger(__name__)

RETIRED_HOST = "api-inference.huggingface.co"
RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_SERVER_WAIT = 120.0

# --- the texts ---------------------------------------------------------------------------------------
# A status or a kind of failure → (error class, what happened, how to fix it). The templates' fields are those
# `explain` fills in; `said` is the server's own error text, `gave_up` how long we tried.
CREDENTIALS = (BackendError, "{where} rejected the credentials (HTTP {status}){said}",
               "set {token_env} to a valid {credential} (setting {token_setting} names the variable)")
BUSY_FIX = "try again shortly, or raise remote_timeout / remote_max_retries"
BUSY = (BackendUnavailable, "{where} is busy or still loading the model (HTTP {status}){estimate}{said}{gave_up}", BUSY_FIX)
SERVER_LOG = "check the server's log; the request parameters or model may not be supported"
ERRORS: dict[int | str, tuple[type[CharbotError], str, str]] = {
    401: CREDENTIALS,
    403: CREDENTIALS,
    404: (BackendError, "model '{model}' not found at {where} (HTTP 404){said}", "{model_fix}"),
    410: (BackendError, f"{{where}} answered 410 Gone: the old serverless API ({RETIRED_HOST}) was retired",
          f"leave base_url empty to use Hugging Face Inference Providers ({HF_ROUTER_URL}) or point it at your own server"),
    429: (BackendUnavailable, "{where} is rate-limited (HTTP 429){estimate}{said}{gave_up}", BUSY_FIX),
    502: BUSY,
    503: BUSY,
    504: BUSY,
    "other 4xx": (BackendError, "{where} answered HTTP {status}{said}", SERVER_LOG),
    "other 5xx": (BackendUnavailable, "{where} answered HTTP {status}{said}", SERVER_LOG),
    "error event": (BackendError, "{where} reported an error{said}", SERVER_LOG),  # an error sent inside a stream
    "timeout": (BackendUnavailable, "no reply from {where} within {timeout:g}s",
                "raise remote_timeout (CHARBOT_REMOTE_TIMEOUT) or check the server's load"),
    "unreachable": (BackendUnavailable, "cannot reach {where} ({reason})", "check that the server is running and base_url is right"),
    "dropped mid-reply": (BackendUnavailable, "{where} dropped the connection in the middle of a reply",
                          "try again; check the server's log if it keeps happening"),
    "malformed": (BackendError, "malformed response from {where}: {reason}",
                  "check that base_url points at an OpenAI-compatible /v1 API (or a proxy that passes it through)"),
    "unexpected": (BackendError, "remote request to {where} failed ({reason})", "see the log for details"),
}
# The words that differ between Hugging Face's router and a server of one's own.
TARGETS = {
    "hf": dict(credential="Hugging Face token", token_setting="hf_token_env",
               model_fix="check --model / CHARBOT_MODEL: the model must be served by an Inference Provider (huggingface.co/models?inference_provider=all)"),
    "own": dict(credential="API key", token_setting="api_key_env",
                model_fix="check --model / CHARBOT_MODEL against the server's /v1/models, and that base_url ends in /v1"),
}


# --- reading a failure -------------------------------------------------------------------------------
def status_of(exc: BaseException) -> int | None:
    return exc.status_code if isinstance(exc, APIStatusError) else None


def is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, (TimeoutError, APITimeoutError))


def is_transient(exc: BaseException) -> bool:
    # A timeout is not retried: the deadline it hit is the whole request's.
    return status_of(exc) in RETRY_STATUSES or (isinstance(exc, APIConnectionError) and not is_timeout(exc))


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def connection_reason(exc: BaseException) -> str:
    """Why a connection failed, from the OS error under the client's; none under it: the server hung up."""
    for cause in _causes(exc):
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "unknown host"
        if isinstance(cause, ssl.SSLError):
            return "TLS handshake failed"
    return "connection dropped"


def short_reason(exc: BaseException) -> str:
    status = status_of(exc)
    if status is not None:
        return f"HTTP {status}"
    if is_timeout(exc):
        return "timed out"
    if isinstance(exc, APIConnectionError):
        return connection_reason(exc)
    return exc.__class__.__name__


def server_wait(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait: Retry-After (seconds or HTTP date), or HF's `estimated_time`."""
    if not isinstance(exc, APIStatusError):
        return None
    value = exc.response.headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            pass  # unparseable: fall back to our own backoff
    body = _whole_body(exc)
    if isinstance(body, dict):
        estimated = body.get("estimated_time")
        if estimated is None and isinstance(body.get("error"), dict):
            estimated = body["error"].get("estimated_time")
        if isinstance(estimated, (int, float)):
            return max(0.0, float(estimated))
    return None


def _whole_body(exc: APIStatusError) -> Any:
    # openai's `.body` keeps only the "error" member of a JSON body; HF puts `estimated_time` beside it.
    try:
        return exc.response.json()
    except (ValueError, RuntimeError):  # not JSON, or a body never read
        return exc.body


def server_says(exc: BaseException, limit: int = 160) -> str:
    """The server's own short error text, when it gave one."""
    body: Any = exc.body if isinstance(exc, APIError) else None
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body.get("message")))
        if isinstance(error, dict):
            error = error.get("message") or error.get("error")
        body = error
    if not isinstance(body, str):
        return ""
    text = " ".join(body.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- retrying ----------------------------------------------------------------------------------------
class ServerWait(wait_base):
    """Wait what the server asked for; otherwise `fallback` (exponential backoff with jitter)."""

    def __init__(self, fallback: wait_base):
        self.fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        hint = server_wait(exc) if exc is not None else None
        return min(hint, MAX_SERVER_WAIT) if hint is not None else self.fallback(retry_state)


def retry_policy(*, max_retries: int, timeout: float, backoff: wait_base, before_sleep: Callable[[RetryCallState], None]) -> AsyncRetrying:
    # stop_before_delay: a wait that would end past the deadline is not started; the error says so at once.
    return AsyncRetrying(
        retry=retry_if_exception(is_transient),
        wait=ServerWait(backoff),
        stop=stop_after_attempt(max_retries + 1) | stop_before_delay(timeout),
        before_sleep=before_sleep,
        reraise=True,
    )


# --- explaining --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ErrorContext:
    """What error texts need to know about the backend, fixed at its construction."""

    where: str  # redacted URL
    on_hf: bool
    token_env: str
    timeout: float
    secret: str | None = field(repr=False)  # scrubbed from every text, even one the server echoed it in

    def scrub(self, text: str) -> str:
        return text.replace(self.secret, "***") if self.secret else text


def _key(exc: BaseException, mid_reply: bool) -> int | str:
    status = status_of(exc)
    if status is not None:
        return status if status in ERRORS else ("other 5xx" if status >= 500 else "other 4xx")
    if isinstance(exc, Malformed):
        return "malformed"
    if is_timeout(exc):
        return "timeout"
    if isinstance(exc, APIConnectionError):
        return "dropped mid-reply" if mid_reply else "unreachable"
    return "error event" if isinstance(exc, APIError) else "unexpected"


def explain(exc: BaseException, ctx: ErrorContext, *, model: str, elapsed: float, mid_reply: bool = False) -> CharbotError:
    """Any failure → one line saying what happened and how to fix it. Never contains the token."""
    if isinstance(exc, CharbotError):
        return exc
    key = _key(exc, mid_reply)
    if key == "unexpected":
        log.exception("unexpected remote failure")
    error_class, what, fix = ERRORS[key]
    said, wait = server_says(exc), server_wait(exc)
    fields = dict(
        TARGETS["hf" if ctx.on_hf else "own"], where=ctx.where, model=model or "(server default)", token_env=ctx.token_env,
        timeout=ctx.timeout, status=status_of(exc), said=f": {said}" if said else "",
        reason=str(exc) if key == "malformed" else short_reason(exc),
        estimate=f" (server estimates {wait:.0f}s more)" if wait else "",
        gave_up=f"; gave up after {elapsed:.1f}s" if elapsed >= 0.1 else f"; not waiting past remote_timeout={ctx.timeout:g}s",
    )
    return error_class(ctx.scrub(what.format(**fields)), ctx.scrub(fix.format(**fields)))
