"""`charbot serve` as a user runs it: the real CLI in a subprocess on the embedded model, and the real `openai`
client (or a bare HTTP client where a request must be malformed or abandoned)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import aiohttp
import openai
import pytest

from charbot.memory_sqlite import SqliteMemory
from cli_process import ServeCli, user_env
from serve_support import write_cards

KEY = "serve-test-key-5f0c9a1e7d"
# What the engine says when the model produced nothing usable: a reply equal to it was not generated.
FALLBACK = "FALLBACK-REPLY-SENTINEL-7c2a"


def _server(tmp_path, *args: str, **env: str) -> ServeCli:
    return ServeCli("--seed", "7", *args, env=user_env(tmp_path, CHARBOT_FALLBACK_REPLY=FALLBACK, **env), cwd=tmp_path)


def _one_line_error(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1 and lines[0].startswith("charbot: error:"), done.stderr
    return lines[0]


def test_a_key_setting_without_its_variable_stops_before_loading(tmp_path):
    env = user_env(tmp_path)
    env.pop("SERVE_API_KEY", None)
    done = subprocess.run([sys.executable, "-m", "charbot", "serve", "--serve-api-key-env", "SERVE_API_KEY"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert "SERVE_API_KEY" in _one_line_error(done) and "Traceback" not in done.stderr


def test_a_port_in_use_is_a_one_line_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "charbot", "serve", "--port", str(port)], env=user_env(tmp_path), cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
    assert f"cannot listen on 127.0.0.1:{port}" in _one_line_error(done) and "--serve-port" in done.stderr


@pytest.mark.slow
@pytest.mark.model
async def test_the_openai_client_talks_to_charbot_serve(tmp_path):
    cards = write_cards(tmp_path / "cards")
    server = _server(tmp_path, "--serve-api-key-env", "SERVE_API_KEY", "--serve-max-body-bytes", "65536", "--persona-dir", str(cards),
                     SERVE_API_KEY=KEY)
    async with server:
        await server.wait_ready()
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY, max_retries=0) as client:
            assert [m.id for m in (await client.models.list()).data] == ["orla", "pip-tolley"]

            hello = [{"role": "user", "content": "Hello! Who are you?"}]
            done = await client.chat.completions.create(model="orla", messages=hello, max_tokens=32)
            text = done.choices[0].message.content
            assert text != FALLBACK and len(text.split()) >= 3, text  # generated words
            assert done.usage.completion_tokens > 0 and done.usage.prompt_tokens > 100  # the card is in the prompt

            stream = await client.chat.completions.create(model="pip-tolley", messages=hello, max_tokens=32, stream=True)
            chunks = [c async for c in stream]
            deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
            assert len(deltas) >= 3 and "".join(deltas).strip() != FALLBACK  # arrived in pieces
            assert chunks[-1].choices[0].finish_reason in ("stop", "length")

            # memory across two requests: the second prompt holds the first exchange
            named = {"X-Conversation-Id": "marek"}
            first = await client.chat.completions.create(model="orla", max_tokens=24, extra_headers=named,
                                                         messages=[{"role": "user", "content": "My name is Marek and I mend nets."}])
            ask = [{"role": "user", "content": "What do I mend?"}]
            second = await client.chat.completions.create(model="orla", max_tokens=24, messages=ask, extra_headers=named)
            alone = await client.chat.completions.create(model="orla", max_tokens=24, messages=ask)
            assert second.usage.prompt_tokens > alone.usage.prompt_tokens + first.usage.completion_tokens

            async with openai.AsyncOpenAI(base_url=server.base_url, api_key="not-the-key", max_retries=0) as stranger:
                with pytest.raises(openai.AuthenticationError) as refused:
                    await stranger.chat.completions.create(model="orla", messages=hello)
            assert refused.value.status_code == 401 and refused.value.body["code"] == "invalid_api_key"

            with pytest.raises(openai.BadRequestError) as oversized:
                await client.chat.completions.create(model="orla", messages=[{"role": "user", "content": "x" * 70_000}])
            assert oversized.value.status_code == 400 and oversized.value.body["code"] == "request_too_large"

        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as http:
            async with http.post(f"{server.base_url}/chat/completions", data=b'{"model": "orla", "messages": [') as malformed:
                assert malformed.status == 400 and (await malformed.json())["error"]["code"] == "invalid_json"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.base_url}/models") as anonymous:
                assert anonymous.status == 401 and "error" in await anonymous.json()
    assert server.returncode == 0, server.stderr[-2000:]
    assert KEY not in server.stdout + server.stderr and "Traceback" not in server.stderr
    store = SqliteMemory(tmp_path / "memory.db")
    remembered = [t.content for t in store.history("api:orla:marek")]
    store.close()
    assert remembered == ["My name is Marek and I mend nets.", first.choices[0].message.content,
                          "What do I mend?", second.choices[0].message.content]


async def _content_chunks(response: aiohttp.ClientResponse, n: int) -> tuple[int, float]:
    """Read the stream until `n` content deltas have come; the count and the seconds between the first and the last."""
    seen, first = 0, None
    while seen < n:
        line = await response.content.readline()
        assert line, "the stream ended early"
        if line.startswith(b"data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
            seen += 1
            first = first or time.perf_counter()
    return seen, time.perf_counter() - first


@pytest.mark.slow
@pytest.mark.model
async def test_a_full_queue_is_429_and_a_client_that_leaves_stops_the_model(tmp_path):
    long = {"model": "orla", "stream": True, "max_tokens": 1500, "ignore_eos": True, "temperature": 0,
            "messages": [{"role": "user", "content": "Tell me everything about the lighthouse."}]}
    async with _server(tmp_path, "--serve-max-inflight", "1", "--serve-max-queue", "0", "--serve-max-tokens", "1500") as server:
        await server.wait_ready()
        async with aiohttp.ClientSession() as http, openai.AsyncOpenAI(base_url=server.base_url, api_key="-", max_retries=0) as client:
            held = await http.post(f"{server.base_url}/chat/completions", json=long)
            seen, seconds = await _content_chunks(held, 20)  # generating: the only slot is taken
            with pytest.raises(openai.RateLimitError) as busy:
                await client.chat.completions.create(model="orla", messages=[{"role": "user", "content": "Hello?"}])
            assert busy.value.status_code == 429 and int(busy.value.response.headers["Retry-After"]) >= 1
            status, health = await server.health()
            assert (health["inflight"], health["backend_active"]) == (1, 1)

            left = time.perf_counter()
            held.close()  # the client hangs up mid-stream
            await server.wait_health(lambda status, body: body["backend_active"] == 0 and body["inflight"] == 0,
                                     "idle after the client left", timeout=30)
            stopped_after = time.perf_counter() - left
            # at the rate it was streaming (at most one delta a token), the rest would have taken this long
            rest = (1500 - seen) * seconds / (seen - 1)
            assert stopped_after < rest / 4, (stopped_after, rest)
            async with http.get(f"{server.root}/metrics") as metrics:
                assert "charbot_serve_cancelled_total 1.0" in await metrics.text()

            done = await client.chat.completions.create(model="orla", max_tokens=16, messages=[{"role": "user", "content": "Hello?"}])
            assert done.choices[0].message.content  # the slot is free again
    assert server.returncode == 0, server.stderr[-2000:]
    assert "Traceback" not in server.stderr
