"""The remote backend against a REAL OpenAI-compatible server (llama-cpp-python's server with the embedded
model on 127.0.0.1), directly and through a fault-injecting proxy: each fault ends in a reply or a short
error within the configured timeout, and the next request succeeds once the fault is gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest
from pydantic import SecretStr

from charbot.backends.base import Message, Prompt
from charbot.backends.remote import RemoteBackend
from charbot.errors import BackendError, BackendUnavailable
from charbot.generation import GenerationSettings
from conftest import RemoteWithHistory
from faultproxy import FaultProxy

pytestmark = pytest.mark.model

HELLO = Prompt(messages=(Message("system", "You are Orla, a lighthouse keeper."), Message("user", "Hello, who are you?")))
SHORT = GenerationSettings(max_new_tokens=8)
GREEDY = GenerationSettings(max_new_tokens=16, do_sample=False, seed=7)
TIMEOUT = 20.0  # generous: the CPU is shared; fault tests that test the timeout set their own


@pytest.fixture(scope="module")
def proxy(llama_server):
    with FaultProxy(llama_server.root) as p:
        yield p


@pytest.fixture(autouse=True)
def clean_proxy(request):
    if "proxy" in request.fixturenames:
        request.getfixturevalue("proxy").clear()
    yield


def backend_for(url: str, **kw) -> RemoteWithHistory:
    kw.setdefault("timeout", TIMEOUT)
    kw.setdefault("backoff_initial", 0.05)
    kw.setdefault("backoff_max", 0.5)
    return RemoteWithHistory(base_url=url, **kw)


@pytest.fixture
async def via_proxy(proxy):
    backend = backend_for(proxy.base_url, max_retries=3)
    await backend.load()
    proxy.clear()
    yield backend
    await backend.aclose()


async def assert_recovers(backend: RemoteBackend) -> None:
    completion = await backend.complete(HELLO, SHORT)
    assert completion.text.strip()
    assert backend.ready and backend.status == "ready"


# --- the real server -------------------------------------------------------------------------------
async def test_load_resolves_the_served_model_and_warms_up(llama_server):
    backend = backend_for(llama_server.base_url)
    assert not backend.ready
    await backend.load()
    with urllib.request.urlopen(f"{llama_server.base_url}/models") as r:
        served = json.load(r)["data"][0]["id"]
    assert backend.model_id == served
    assert backend.ready and backend.status == "ready"
    completion = await backend.complete(HELLO, SHORT)
    assert completion.text.strip() and 0 < completion.completion_tokens <= 8 and completion.prompt_tokens > 0
    await backend.aclose()


async def test_stream_gives_the_same_greedy_text_as_complete(llama_server):
    backend = backend_for(llama_server.base_url, model="any-name-works")
    whole = await backend.complete(HELLO, GREEDY)
    pieces = [piece async for piece in backend.stream(HELLO, GREEDY)]
    assert len(pieces) > 1
    assert "".join(pieces) == whole.text
    await backend.aclose()


async def test_dialogpt_format_warms_up_with_raw_text(proxy):
    backend = backend_for(proxy.base_url, model="m", prompt_format="dialogpt")
    await backend.load()
    assert backend.default_prompt_format == "dialogpt" and backend.ready
    assert [r.path for r in proxy.requests] == ["/v1/completions"]
    assert proxy.requests[0].json()["prompt"] == "Hello" and proxy.requests[0].json()["max_tokens"] == 1
    await backend.aclose()


async def test_raw_text_goes_to_v1_completions(via_proxy, proxy):
    completion = await via_proxy.complete(Prompt(text="The lighthouse keeper looked at the sea and said"), SHORT)
    pieces = [p async for p in via_proxy.stream(Prompt(text="The old captain said"), SHORT)]
    assert completion.text.strip() and "".join(pieces).strip()
    assert [r.path for r in proxy.requests] == ["/v1/completions", "/v1/completions"]
    assert proxy.requests[0].json()["prompt"].startswith("The lighthouse keeper")


async def test_generation_settings_reach_the_server(via_proxy, proxy):
    settings = GenerationSettings(max_new_tokens=5, temperature=0.6, top_k=40, top_p=0.9, seed=3, repetition_penalty=1.2, ignore_eos=True).with_stop(
        "\nUser:", "\nOrla:", "\nA:", "\nB:", "\nC:"
    )
    await via_proxy.complete(HELLO, settings)
    body = proxy.requests[-1].json()
    assert body["model"] == via_proxy.model_id
    assert body["messages"][1] == {"role": "user", "content": "Hello, who are you?"}
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"]) == (5, 0.6, 0.9, 3)
    assert (body["top_k"], body["repetition_penalty"], body["ignore_eos"]) == (40, 1.2, True)
    assert body["stop"] == ["\nUser:", "\nOrla:", "\nA:", "\nB:"]  # at most 4: OpenAI-style servers reject more


# --- faults ----------------------------------------------------------------------------------------
async def test_429_waits_what_retry_after_says_then_replies(via_proxy, proxy):
    proxy.inject("status", status=429, headers={"Retry-After": "1"}, message="slow down")
    completion = await via_proxy.complete(HELLO, SHORT)
    assert completion.text.strip()
    limited, retry = await proxy.wait_ended()
    assert (limited.fault, retry.fault) == ("status", None)
    # As the server saw it: the retry came no sooner than the second it asked for.
    assert retry.at - (limited.at + limited.lasted) >= 0.95


async def test_503_loading_waits_estimated_time_and_reports_status_until_ready(proxy):
    backend = backend_for(proxy.base_url, max_retries=4)
    proxy.inject("loading", estimated_time=0.6, times=2)
    assert not backend.ready
    await backend.load()
    waiting = backend.waits()
    assert len(waiting) == 2 and all(not ready for ready, status in backend.statuses if status in waiting)
    assert "HTTP 503" in waiting[0] and "in 0.6s" in waiting[0]
    assert backend.ready and backend.status == "ready"
    # The first two requests (model lookup at /v1/models counts) were "loading"; then the warm-up went through.
    assert [r.fault for r in proxy.requests][:2] == ["loading", "loading"]
    assert proxy.requests[-1].path == "/v1/chat/completions" and proxy.requests[-1].fault is None
    await backend.aclose()


async def test_503_loading_longer_than_the_timeout_fails_at_once_then_recovers(proxy):
    backend = backend_for(proxy.base_url, model="m", timeout=5, max_retries=3)
    proxy.inject("loading", estimated_time=60)
    with pytest.raises(BackendUnavailable) as info:
        await backend.complete(HELLO, SHORT)
    # No point sleeping 60s with a 5s budget: one request, and no wait announced before a retry.
    assert [r.fault for r in proxy.requests] == ["loading"] and backend.waits() == []
    message = str(info.value)
    assert "HTTP 503" in message and "60s" in message and "remote_timeout" in message and "\n" not in message
    assert backend.status.startswith("unavailable")
    await assert_recovers(backend)
    await backend.aclose()


async def complete_text(backend: RemoteBackend) -> str:
    return (await backend.complete(HELLO, SHORT)).text


async def streamed_text(backend: RemoteBackend) -> str:
    return "".join([p async for p in backend.stream(HELLO, SHORT)])


@pytest.mark.parametrize("ask", [complete_text, streamed_text], ids=["complete", "stream"])
async def test_slow_response_gives_up_at_the_timeout_then_recovers(proxy, ask):
    backend = backend_for(proxy.base_url, model="m", timeout=4, max_retries=3)
    proxy.inject("slow", delay=60)
    with pytest.raises(BackendUnavailable) as info:
        await ask(backend)
    assert "within 4s" in str(info.value) and "remote_timeout" in str(info.value)
    # The proxy saw the one request (the budget was spent: no retry) and the client hang up on it: it neither
    # waited out the 60s nor gave up before its own 4s.
    [slow] = await proxy.wait_ended()
    assert slow.fault == "slow" and slow.outcome == "client left" and slow.lasted >= 3.9
    assert (await ask(backend)).strip()
    assert backend.ready and backend.status == "ready"
    await backend.aclose()


@pytest.mark.parametrize("kind", ["truncated", "malformed"])
async def test_malformed_json_is_a_clear_error_then_recovers(via_proxy, proxy, kind):
    proxy.inject(kind)
    with pytest.raises(BackendError) as info:
        await via_proxy.complete(HELLO, SHORT)
    assert str(info.value).startswith(f"malformed response from {proxy.base_url}")
    assert info.value.user_message
    await assert_recovers(via_proxy)


async def test_one_dropped_connection_is_retried(via_proxy, proxy):
    proxy.inject("drop")
    completion = await via_proxy.complete(HELLO, SHORT)
    assert completion.text.strip()
    assert [r.fault for r in proxy.requests] == ["drop", None]


async def test_connection_dropping_every_time_gives_up_after_the_retries(via_proxy, proxy):
    proxy.inject("drop", times=10)
    with pytest.raises(BackendUnavailable) as info:
        await via_proxy.complete(HELLO, SHORT)
    assert "connection dropped" in str(info.value)
    assert len(proxy.requests) == 1 + via_proxy.max_retries
    proxy.clear()
    await assert_recovers(via_proxy)


async def test_connection_dropped_mid_stream_is_reported_not_hidden(via_proxy, proxy):
    proxy.inject("drop_mid_stream", after=3)
    pieces = []
    with pytest.raises(BackendUnavailable) as info:
        async for piece in via_proxy.stream(HELLO, GenerationSettings(max_new_tokens=32)):
            pieces.append(piece)
    assert "middle of a reply" in str(info.value)
    assert "".join([p async for p in via_proxy.stream(HELLO, SHORT)]).strip()


async def test_401_names_the_variable_never_the_key(proxy, monkeypatch):
    key = "sk-very-secret-value-123"
    monkeypatch.setenv("MY_SERVER_KEY", key)
    from charbot.config import load_settings

    monkeypatch.setenv("CHARBOT_API_KEY_ENV", "MY_SERVER_KEY")
    backend = RemoteBackend.from_settings(load_settings(base_url=proxy.base_url, model="m"))
    proxy.inject("status", status=401, body={"error": f"invalid api key {key}"})
    with pytest.raises(BackendError) as info:
        await backend.complete(HELLO, SHORT)
    message = str(info.value)
    assert "HTTP 401" in message and "MY_SERVER_KEY" in message
    assert key not in message and key not in backend.status
    assert proxy.requests[0].headers["Authorization"] == f"Bearer {key}"  # sent to the server, and only there
    await backend.aclose()


async def test_404_unknown_model(via_proxy, proxy):
    proxy.inject("status", status=404, body={"error": {"message": "model 'nope' does not exist"}})
    with pytest.raises(BackendError) as info:
        await via_proxy.complete(HELLO, SHORT)
    assert "not found" in str(info.value) and "/v1/models" in str(info.value) and "does not exist" in str(info.value)
    await assert_recovers(via_proxy)


async def test_410_points_at_the_router(via_proxy, proxy):
    proxy.inject("status", status=410, body={"error": "gone"})
    with pytest.raises(BackendError) as info:
        await via_proxy.complete(HELLO, SHORT)
    assert "410" in str(info.value) and "https://router.huggingface.co/v1" in str(info.value)
    await assert_recovers(via_proxy)


# --- through the real CLI --------------------------------------------------------------------------
def _cli_env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARBOT_")}
    env.update(XDG_DATA_HOME=str(tmp_path / "xdg"), PYTHONUNBUFFERED="1")
    return env


@pytest.mark.slow
def test_cli_chat_holds_a_conversation_with_the_server(llama_server, tmp_path):
    db = tmp_path / "chat.db"
    result = subprocess.run(
        [sys.executable, "-m", "charbot", "chat", "--backend", "remote", "--base-url", llama_server.base_url, "--db", str(db), "--max-new-tokens", "24"],
        input="Hello\nWhat is your name?\n", capture_output=True, text=True, timeout=180, cwd=tmp_path, env=_cli_env(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 2, result.stdout
    for line in lines:
        assert line.startswith("Orla: ") and line[len("Orla: "):].strip()
    from charbot.memory_sqlite import SqliteMemory

    store = SqliteMemory(db)
    try:
        assert store.count_messages("cli:cli") == 4  # both exchanges remembered
    finally:
        store.close()


def test_cli_reports_a_server_failure_in_one_line(proxy, tmp_path):
    proxy.inject("status", status=410, times=5, body={"error": "gone"})
    result = subprocess.run(
        [sys.executable, "-m", "charbot", "chat", "--backend", "remote", "--base-url", proxy.base_url, "--db", str(tmp_path / "c.db")],
        input="Hello\n", capture_output=True, text=True, timeout=120, cwd=tmp_path, env=_cli_env(tmp_path),
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("charbot: error:")]
    assert len(errors) == 1 and "410" in errors[0] and "router.huggingface.co" in errors[0]


async def test_a_stream_left_early_is_closed_and_the_client_serves_on(via_proxy, proxy):
    stream = via_proxy.stream(HELLO, GenerationSettings(max_new_tokens=64, ignore_eos=True))
    assert await anext(stream)
    await stream.aclose()
    # The server hears the hang-up at once instead of generating the other pieces for nobody.
    [left] = await proxy.wait_ended()
    assert left.outcome == "client left", left
    assert (await streamed_text(via_proxy)).strip() and (await complete_text(via_proxy)).strip()


@pytest.mark.parametrize(
    "model, provider, asked",
    [("org/model:novita", None, "org/model:novita"), ("org/model:novita", "together", "org/model:together"), ("org/model", "auto", "org/model")],
)
async def test_hf_router_gets_model_colon_provider_the_token_and_only_openai_parameters(proxy, monkeypatch, model, provider, asked):
    monkeypatch.setattr("charbot.backends.remote.HF_ROUTER_URL", proxy.base_url)
    monkeypatch.setenv("OPENAI_ORG_ID", "org-not-for-hf")
    backend = RemoteWithHistory(model=model, provider=provider, token=SecretStr("hf_router_token"), timeout=TIMEOUT)
    settings = GenerationSettings(max_new_tokens=4, top_k=40, repetition_penalty=1.2, ignore_eos=True)
    assert (await backend.complete(HELLO, settings)).text.strip()
    [request] = proxy.requests
    body, headers = request.json(), {k.lower(): v for k, v in request.headers.items()}
    assert request.path == "/v1/chat/completions" and body["model"] == asked
    assert not {"top_k", "repetition_penalty", "ignore_eos"} & set(body)  # providers may reject what is not OpenAI's
    assert headers["authorization"] == "Bearer hf_router_token" and "openai-organization" not in headers
    await backend.aclose()


async def test_engine_over_remote_keeps_memory_consistent_across_a_fault(proxy, isolated_env):
    from charbot.config import load_settings
    from charbot.factory import build_engine

    settings = load_settings(base_url=proxy.base_url, max_new_tokens=12, remote_timeout=4, remote_max_retries=1)
    engine = build_engine(settings)
    await engine.warm_up()
    first = await engine.reply("c1", "Hello, who are you?")
    assert first.text.strip() and first.persona == "Orla"
    proxy.inject("slow", delay=60)
    with pytest.raises(BackendUnavailable) as info:
        await engine.reply("c1", "Is the kettle on?")
    assert info.value.user_message  # what Discord shows
    second = await engine.reply("c1", "What is your name?")
    assert second.text.strip()
    history = [t.content for t in await engine.store.history("c1", 10)]
    assert "Is the kettle on?" not in history  # the failed turn left nothing half-stored
    assert history[0] == "Hello, who are you?" and history[2] == "What is your name?" and len(history) == 4
    # The model saw the first exchange when answering the second: multi-turn over HTTP.
    assert any(m["content"] == first.text for m in proxy.requests[-1].json()["messages"])
    await engine.backend.aclose()
    await engine.store.close()
