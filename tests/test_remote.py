"""The remote backend's own logic that needs no model: settings, naming, waits the server asks for, and
failures that never reach a server (nothing listening)."""

from __future__ import annotations

import email.utils

import httpx2  # openai's exceptions carry httpx2 requests and responses
import openai
import pytest

from charbot.backends import create_backend
from charbot.backends.base import Message, Prompt
from charbot.backends.remote import DEFAULT_HF_MODEL, RemoteBackend, redact_url, split_provider
from charbot.backends.remote_errors import ErrorContext, explain, is_transient, server_wait
from charbot.config import load_settings
from charbot.errors import BackendError, BackendUnavailable, ConfigError
from charbot.generation import GenerationSettings
from conftest import RemoteWithHistory
from loopback import free_port


REQUEST = httpx2.Request("POST", "http://server.test/v1/chat/completions")


def http_error(status: int, *, headers: dict | None = None, json: dict | None = None) -> openai.APIStatusError:
    """What the openai client raises for this answer: `.body` is only the "error" member of a JSON body."""
    response = httpx2.Response(status, headers=headers, json=json, request=REQUEST)
    return openai.APIStatusError(f"Error code: {status}", response=response, body=json.get("error", json) if json else None)


@pytest.fixture
def no_tokens(isolated_env, monkeypatch):
    for name in ("HF_TOKEN", "HUGGINGFACE_TOKEN", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return isolated_env


@pytest.mark.parametrize(
    "model, expected",
    [
        ("HuggingFaceTB/SmolLM3-3B:together", ("HuggingFaceTB/SmolLM3-3B", "together")),
        ("meta-llama/Llama-3.1-8B-Instruct:auto", ("meta-llama/Llama-3.1-8B-Instruct", "auto")),
        ("HuggingFaceTB/SmolLM3-3B", ("HuggingFaceTB/SmolLM3-3B", None)),
        ("http://host:8000/v1", ("http://host:8000/v1", None)),  # a URL's colon is not a provider
        ("llama3:8b", ("llama3", "8b")),
    ],
)
def test_split_provider(model, expected):
    assert split_provider(model) == expected


def test_redact_url_drops_credentials_and_query():
    assert redact_url("https://user:s3cret@host.test:8443/v1?api_key=s3cret") == "https://host.test:8443/v1"


def test_hf_router_without_token_is_a_config_error_naming_the_variable(no_tokens):
    with pytest.raises(ConfigError) as info:
        create_backend(load_settings(backend="remote"))
    message = str(info.value)
    assert "HF_TOKEN" in message and "--base-url" in message and "\n" not in message


def test_tutorial_token_variable_is_accepted(no_tokens, monkeypatch):
    monkeypatch.setenv("HUGGINGFACE_TOKEN", "hf_tutorialtoken")
    backend = create_backend(load_settings(backend="remote"))
    assert isinstance(backend, RemoteBackend)
    assert backend.token is not None and backend.token.get_secret_value() == "hf_tutorialtoken"
    assert backend.model_id == DEFAULT_HF_MODEL
    assert "hf_tutorialtoken" not in repr(backend.token) and "hf_tutorialtoken" not in backend.describe()


def test_provider_from_model_suffix_and_setting(no_tokens, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    backend = create_backend(load_settings(backend="remote", model="org/model:novita"))
    assert (backend.model_id, backend.provider) == ("org/model", "novita")
    monkeypatch.setenv("CHARBOT_PROVIDER", "together")
    backend = create_backend(load_settings(backend="remote", model="org/model"))
    assert backend.provider == "together"


def test_base_url_selects_remote_and_api_key_env(no_tokens, monkeypatch):
    monkeypatch.setenv("MY_VLLM_KEY", "sk-local")
    monkeypatch.setenv("CHARBOT_API_KEY_ENV", "MY_VLLM_KEY")
    backend = create_backend(load_settings(base_url="http://127.0.0.1:8000/v1/"))
    assert isinstance(backend, RemoteBackend)  # backend "auto" + base_url
    assert backend.base_url == "http://127.0.0.1:8000/v1"
    assert backend.token.get_secret_value() == "sk-local" and backend.token_env == "MY_VLLM_KEY"
    assert backend.ready is False and backend.status == "not started"


def test_retry_after_seconds_and_http_date(monkeypatch):
    assert server_wait(http_error(429, headers={"Retry-After": "3"})) == 3.0
    now = 1_700_000_000.0
    monkeypatch.setattr("charbot.backends.remote_errors.time.time", lambda: now)
    when = email.utils.formatdate(now + 20, usegmt=True)
    assert server_wait(http_error(503, headers={"Retry-After": when})) == 20.0


def test_hf_estimated_time_is_a_wait_hint():
    assert server_wait(http_error(503, json={"error": "Model is currently loading", "estimated_time": 12.5})) == 12.5
    assert server_wait(http_error(503, json={"error": "overloaded"})) is None


def test_which_failures_are_retried():
    assert is_transient(http_error(429)) and is_transient(http_error(503))
    assert not is_transient(http_error(401)) and not is_transient(http_error(404)) and not is_transient(http_error(410))
    assert is_transient(openai.APIConnectionError(request=REQUEST))
    assert not is_transient(openai.APITimeoutError(request=REQUEST))  # the deadline is spent: retrying cannot help
    assert not is_transient(TimeoutError())


async def test_nothing_listening_is_a_short_unavailable_error_within_the_timeout():
    backend = RemoteWithHistory(base_url=f"http://127.0.0.1:{free_port()}/v1", model="m", timeout=3, max_retries=2, backoff_initial=0.05, backoff_max=0.2)
    with pytest.raises(BackendUnavailable) as info:
        await backend.complete(Prompt(messages=(Message("user", "Hello"),)), GenerationSettings(max_new_tokens=4))
    # Refused at once, so it ends after its retries with short backoffs, not at the 3s timeout.
    waits = [float(status.rsplit(" in ", 1)[1].rstrip("s")) for status in backend.waits()]
    assert len(waits) == 2 and all(w <= 0.2 for w in waits), backend.waits()
    assert "cannot reach" in str(info.value) and "connection refused" in str(info.value)
    assert info.value.user_message  # what a transport shows the chat user
    assert backend.ready is False and backend.status.startswith("unavailable: cannot reach")
    await backend.aclose()


def test_unparseable_retry_after_falls_back_to_backoff():
    assert server_wait(http_error(429, headers={"Retry-After": "soon-ish"})) is None


def test_a_bare_host_means_its_v1(no_tokens):
    assert RemoteBackend(base_url="http://gpu-box:8080").base_url == "http://gpu-box:8080/v1"
    assert RemoteBackend(base_url="http://gpu-box:8080/").base_url == "http://gpu-box:8080/v1"
    assert RemoteBackend(base_url="http://gpu-box:8080/openai/v1").base_url == "http://gpu-box:8080/openai/v1"


def test_raw_text_prompts_on_the_hf_router_are_a_config_error(no_tokens, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    with pytest.raises(ConfigError) as info:
        create_backend(load_settings(backend="remote", prompt_format="dialogpt"))
    assert "/v1/completions" in str(info.value) and "--base-url" in str(info.value)


@pytest.mark.parametrize("on_hf, fix", [(True, "Inference Provider"), (False, "/v1/models")])
def test_404_fix_depends_on_where_the_model_lives(on_hf, fix):
    ctx = ErrorContext("https://server.test/v1", on_hf, "HF_TOKEN" if on_hf else "OPENAI_API_KEY", 30.0, None)
    error = explain(http_error(404, json={"error": {"message": "no such model"}}), ctx, model="org/m", elapsed=0.2)
    assert isinstance(error, BackendError) and not isinstance(error, BackendUnavailable)
    assert error.what == "model 'org/m' not found at https://server.test/v1 (HTTP 404): no such model"
    assert fix in error.fix


@pytest.mark.parametrize(
    "status, error_class, words",
    [
        (401, BackendError, "rejected the credentials (HTTP 401)"),
        (403, BackendError, "rejected the credentials (HTTP 403)"),
        (429, BackendUnavailable, "is rate-limited (HTTP 429) (server estimates 9s more)"),
        (504, BackendUnavailable, "is busy or still loading the model (HTTP 504)"),
        (422, BackendError, "answered HTTP 422"),
        (500, BackendUnavailable, "answered HTTP 500"),
    ],
)
def test_every_status_has_its_text_and_error_class_and_never_the_token(status, error_class, words):
    token = "hf_secret_token_value"
    ctx = ErrorContext("https://router.test/v1", True, "HF_TOKEN", 30.0, token)
    error = explain(http_error(status, json={"error": f"bad Bearer {token}", "estimated_time": 9}), ctx, model="org/m", elapsed=1.5)
    assert type(error) is error_class and words in error.what
    text = str(error)
    assert token not in text and "***" in text and "\n" not in text
    if status in (401, 403):
        assert "set HF_TOKEN to a valid Hugging Face token" in text
