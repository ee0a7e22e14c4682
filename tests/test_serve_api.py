"""`charbot serve`'s API with the scripted model, through the real `openai` client where a client would be used:
what reaches the model (persona, turns, sampling), what comes back (bodies, chunks, errors), memory and reset."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest

from charbot.memory_sqlite import SqliteMemory
from conftest import ScriptedBackend
from serve_support import AVATAR, serving, until, write_cards

REPLY = "Aye, the lamp is lit and the sea is calm."


def system_text(prompt) -> str:
    return prompt.messages[0].content


async def test_models_are_the_loaded_characters(isolated_env):
    async with serving(ScriptedBackend([REPLY]), persona_dir=str(write_cards(isolated_env / "cards"))) as s:
        models = await s.openai().models.list()
        assert [m.id for m in models.data] == ["orla", "pip-tolley"] and {m.owned_by for m in models.data} == {"charbot"}
        assert (await s.openai().models.retrieve("pip-tolley")).id == "pip-tolley"
        characters = {c["id"]: c for c in (await (await s.http.get("/v1/characters")).json())["data"]}
        pip, orla = characters["pip-tolley"], characters["orla"]
        assert pip["avatar"] == AVATAR and orla["avatar"] is None and orla["initials"] == "O" and pip["initials"] == "PT"
        assert pip["greeting"] == "Ferry's late again, User. Engine's sulking."  # as the model is shown it
        assert orla["card"]["personality"].startswith("gruff") and pip["card"]["tags"] == ["sample"]


async def test_a_completion_is_the_characters_reply_to_the_callers_messages(isolated_env):
    backend = ScriptedBackend([REPLY])
    async with serving(backend, serve_max_tokens=100) as s:
        done = await s.openai().chat.completions.create(
            model="orla", max_tokens=5000, temperature=0.3, top_p=0.5, seed=5, stop=["END"],
            messages=[
                {"role": "system", "content": "You are a pirate called Bartholomew."},
                {"role": "user", "content": "Remember the storm of ninety-one?", "name": "Sam"},
                {"role": "assistant", "content": "How could I forget."},
                {"role": "user", "content": [{"type": "text", "text": "Was it worse than this one?"}], "name": "Sam"},
            ],
            extra_body={"logit_bias": {"42": 1}, "frobnicate": True},  # unknown fields are ignored
        )
        assert done.object == "chat.completion" and done.model == "orla"
        assert done.choices[0].message.content == REPLY and done.choices[0].finish_reason == "stop"
        assert done.usage.completion_tokens == len(REPLY.split()) and done.usage.prompt_tokens > 0
        prompt, settings = backend.prompts[-1], backend.settings[-1]
        # the card is the system prompt; the caller's system text is left out
        assert "You are Orla" in system_text(prompt) and "Bartholomew" not in json.dumps([m.content for m in prompt.messages])
        shown = [m.content for m in prompt.messages]
        assert "Sam: Remember the storm of ninety-one?" in shown and shown[-1] == "Sam: Was it worse than this one?"
        assert "Orla: How could I forget." in shown
        assert (settings.temperature, settings.top_p, settings.seed, settings.do_sample) == (0.3, 0.5, 5, True)
        assert settings.max_new_tokens == 100 and "END" in settings.stop  # max_tokens capped by serve_max_tokens
        assert s.api.engine.store.sync.count_conversations() == 0  # no conversation id: nothing remembered


async def test_the_lorebook_entries_a_reply_used_come_back_with_it(isolated_env, tmp_path):
    book = tmp_path / "world.json"
    book.write_text(json.dumps({"entries": [{"keys": ["storm"], "content": "Storms on the island come in from the west.", "extensions": {},
                                             "enabled": True, "insertion_order": 10, "comment": "storms"}]}))
    backend = ScriptedBackend([REPLY])
    async with serving(backend, lorebook=str(book)) as s:
        client = s.openai()
        quiet = await client.chat.completions.create(model="orla", messages=[{"role": "user", "content": "Hello"}])
        assert "charbot" not in (quiet.model_extra or {})
        assert "from the west" not in "\n".join(m.content for m in backend.prompts[-1].messages)
        whole = await client.chat.completions.create(model="orla", messages=[{"role": "user", "content": "Is a storm coming?"}])
        assert whole.model_extra["charbot"]["lorebook"] == ["storms (key 'storm' in message 1 (newest first, scan depth 2))"]
        assert "from the west" in "\n".join(m.content for m in backend.prompts[-1].messages)
        stream = await client.chat.completions.create(model="orla", stream=True, messages=[{"role": "user", "content": "Another storm?"}])
        last = [c async for c in stream if c.choices][-1]
        assert last.choices[0].finish_reason == "stop" and last.model_extra["charbot"]["lorebook"][0].startswith("storms (key 'storm'")


async def test_temperature_zero_is_greedy_and_the_server_defaults_fill_the_rest(isolated_env):
    backend = ScriptedBackend([REPLY])
    async with serving(backend, max_new_tokens=40, top_k=7) as s:
        await s.openai().chat.completions.create(model="Orla", temperature=0, messages=[{"role": "user", "content": "Hello"}])
        settings = backend.settings[-1]
        assert (settings.do_sample, settings.max_new_tokens, settings.top_k, settings.ignore_eos) == (False, 40, 7, False)
        await s.openai().chat.completions.create(model="orla", messages=[{"role": "user", "content": "Hello"}],
                                                   extra_body={"top_k": 3, "ignore_eos": True, "repetition_penalty": 1.2})
        assert (backend.settings[-1].top_k, backend.settings[-1].ignore_eos, backend.settings[-1].repetition_penalty) == (3, True, 1.2)


async def test_a_stream_is_openai_chunks_ending_with_done(isolated_env):
    async with serving(ScriptedBackend([REPLY])) as s:
        stream = await s.openai().chat.completions.create(
            model="orla", stream=True, stream_options={"include_usage": True}, messages=[{"role": "user", "content": "Hello"}])
        chunks = [c async for c in stream]
        assert {c.object for c in chunks} == {"chat.completion.chunk"} and len({c.id for c in chunks}) == 1
        assert chunks[0].choices[0].delta.role == "assistant"
        deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        assert len(deltas) > 3 and "".join(deltas) == REPLY  # word by word, as generated
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
        raw = await s.http.post("/v1/chat/completions", json={"model": "orla", "stream": True, "messages": [{"role": "user", "content": "Hi"}]})
        assert raw.headers["Content-Type"].startswith("text/event-stream")
        assert (await raw.text()).endswith("data: [DONE]\n\n")


async def test_a_stream_whose_reply_was_cut_to_a_sentence_says_the_final_text(isolated_env):
    # ten words at max_tokens 10: cut by the cap, so the reply ends at its last full sentence
    async with serving(ScriptedBackend(["Aye, the lamp is lit. And the gulls are very"])) as s:
        stream = await s.openai().chat.completions.create(model="orla", stream=True, max_tokens=10,
                                                            messages=[{"role": "user", "content": "Hello"}])
        chunks = [c async for c in stream]
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
        last = chunks[-1]
        assert streamed == "Aye, the lamp is lit. And the gulls are very"
        assert last.choices[0].finish_reason == "length" and last.model_extra["charbot"] == {"replaced": "Aye, the lamp is lit."}


async def test_a_named_conversation_is_held_in_charbots_memory_and_reset_forgets_it(isolated_env, memory_url):
    backend = ScriptedBackend(["(warm-up)", "Gerald is my leg.", "You asked about Gerald."])
    async with serving(backend, persona_dir=str(write_cards(isolated_env / "cards")), memory_url=memory_url) as s:
        c = s.openai()
        ignored_history = [{"role": "user", "content": "IGNORED-HISTORY"}, {"role": "assistant", "content": "IGNORED-TOO"}]
        first = await c.chat.completions.create(model="orla", messages=[{"role": "user", "content": "Who is Gerald?"}],
                                                extra_headers={"X-Conversation-Id": "conv-1"})
        second = await c.chat.completions.create(model="orla", messages=[*ignored_history, {"role": "user", "content": "What did I ask?"}],
                                                 extra_headers={"X-Conversation-Id": "conv-1"})
        assert (first.choices[0].message.content, second.choices[0].message.content) == ("Gerald is my leg.", "You asked about Gerald.")
        shown = [m.content for m in backend.prompts[-1].messages]
        assert shown[-3:] == ["Who is Gerald?", "Gerald is my leg.", "What did I ask?"]  # memory, then only the new message
        assert not any("IGNORED" in m for m in shown)
        assert [t.content for t in await s.api.engine.store.history("api:orla:conv-1")] == [
            "Who is Gerald?", "Gerald is my leg.", "What did I ask?", "You asked about Gerald."]
        # the `user` field names a conversation too; the same id with another character is another conversation
        await c.chat.completions.create(model="pip-tolley", user="conv-1", messages=[{"role": "user", "content": "Ferry today?"}])
        assert "Pip keeps the island ferry" in system_text(backend.prompts[-1]) and len(backend.prompts[-1].messages) == 3
        assert await s.api.engine.store.count_messages("api:pip-tolley:conv-1") == 2
        forgotten = await s.http.delete("/v1/conversations/conv-1")
        assert forgotten.status == 200 and (await forgotten.json())["messages"] == 6
        assert await s.api.engine.store.count_messages() == 0


async def test_an_api_key_is_asked_for_under_v1_only(isolated_env):
    async with serving(ScriptedBackend([REPLY]), api_key="k-0123456789") as s:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "k-0123456789"}):
            response = await s.http.get("/v1/models", headers=headers)
            assert response.status == 401 and response.headers["WWW-Authenticate"] == "Bearer"
            assert (await response.json())["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError) as refused:
            await s.openai("nope").chat.completions.create(model="orla", messages=[{"role": "user", "content": "Hi"}])
        assert refused.value.status_code == 401
        done = await s.openai("k-0123456789").chat.completions.create(model="orla", messages=[{"role": "user", "content": "Hi"}])
        assert done.choices[0].message.content == REPLY
        assert (await s.http.get("/healthz")).status == 200 and (await s.http.get("/")).status == 200  # no key for these


async def test_a_full_queue_is_429_with_retry_after_and_a_passed_deadline_503(isolated_env):
    backend = ScriptedBackend([REPLY])
    async with serving(backend, serve_max_inflight=1, serve_max_queue=0) as s:
        backend.release = asyncio.Event()  # the first generation holds the only slot until released
        held = asyncio.create_task(s.openai().chat.completions.create(model="orla", messages=[{"role": "user", "content": "first"}]))
        await until(lambda: s.api.engine.scheduler.inflight == 1, "generating")
        with pytest.raises(openai.RateLimitError) as busy:
            await s.openai().chat.completions.create(model="orla", messages=[{"role": "user", "content": "second"}])
        assert busy.value.status_code == 429 and int(busy.value.response.headers["Retry-After"]) >= 1
        assert busy.value.body["code"] == "queue_full"
        backend.release.set()
        assert (await held).choices[0].message.content == REPLY
    backend = ScriptedBackend([REPLY])
    async with serving(backend, serve_max_inflight=1, serve_max_queue=4, queue_timeout=0.2) as s:
        backend.release = asyncio.Event()
        held = asyncio.create_task(s.openai().chat.completions.create(model="orla", messages=[{"role": "user", "content": "first"}]))
        await until(lambda: s.api.engine.scheduler.inflight == 1, "generating")
        with pytest.raises(openai.InternalServerError) as late:
            await s.openai().chat.completions.create(model="orla", messages=[{"role": "user", "content": "second"}])
        assert late.value.status_code == 503 and late.value.body["code"] == "queue_timeout"
        backend.release.set()
        await held
        metrics = await (await s.http.get("/metrics")).text()
        assert 'charbot_serve_busy_total{why="deadline"} 1.0' in metrics


BAD_BODIES = [
    (b"{not json", 400, "invalid_json"),
    (b"\xff\xfe\x00garbage", 400, "invalid_json"),
    (b"[" * 3000, 400, "invalid_json"),  # nested past the parser's recursion limit
    (b'["a list"]', 400, "invalid_body"),
    (b'{"model": "orla"}', 400, "invalid_value"),
    (b'{"messages": []}', 400, "invalid_value"),
    (b'{"messages": [{"role": "wizard", "content": "hi"}]}', 400, "invalid_value"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 3}', 400, "invalid_value"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "n": 2}', 400, "invalid_value"),
    (b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}', 400, "invalid_value"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4o"}', 404, "model_not_found"),
    (b'{"messages": [{"role": "user", "content": "' + b"x" * 5000 + b'"}]}', 400, "request_too_large"),
]


@pytest.mark.parametrize("body, status, code", BAD_BODIES, ids=[f"{i}-{code}" for i, (*_, code) in enumerate(BAD_BODIES)])
async def test_bad_requests_get_an_openai_json_error(isolated_env, body, status, code):
    backend = ScriptedBackend([REPLY])
    async with serving(backend, serve_max_body_bytes=4096) as s:
        response = await s.http.post("/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
        text = await response.text()
        assert response.status == status and response.headers["Content-Type"].startswith("application/json"), text
        error = json.loads(text)["error"]
        assert error["code"] == code and error["type"] == "invalid_request_error" and "\n" not in error["message"]
        assert "Traceback" not in text and backend.calls == 1  # the warm-up only: nothing reached the model


async def test_failures_are_json_errors_never_tracebacks(isolated_env):
    backend = ScriptedBackend([REPLY])
    async with serving(backend, warm=False) as s:
        loading = await s.http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert loading.status == 503 and (await loading.json())["error"]["code"] == "model_loading"
        await s.api.warm_up()
        backend.fail_next = 1
        with pytest.raises(openai.InternalServerError) as failed:
            await s.openai().chat.completions.create(model="orla", messages=[{"role": "user", "content": "hi"}])
        assert failed.value.status_code == 500 and failed.value.body["code"] == "generation_failed"
        for method, path, status in (("GET", "/nowhere", 404), ("PUT", "/v1/models", 405), ("GET", "/page/missing.js", 404)):
            response = await s.http.request(method, path)
            assert response.status == status and "error" in await response.json()


async def test_the_page_health_and_metrics(isolated_env):
    async with serving(ScriptedBackend([REPLY])) as s:
        page = await s.http.get("/")
        html = await page.text()
        assert page.status == 200 and "default-src 'none'" in page.headers["Content-Security-Policy"]
        assert '<script src="/page/app.js"' in html and "http" not in html.replace('"http://www.w3.org', "")  # nothing from elsewhere
        assert 'id="lorebook-entries"' in html  # where the page lists the lorebook entries a reply used
        for asset in ("/page/app.js", "/page/style.css"):
            assert (await s.http.get(asset)).status == 200
        await s.openai().chat.completions.create(model="orla", messages=[{"role": "user", "content": "Hello"}])
        health = await (await s.http.get("/healthz")).json()
        assert health["ready"] and health["models"] == ["orla"] and (health["inflight"], health["queue_depth"]) == (0, 0)
        metrics = await (await s.http.get("/metrics")).text()
        assert 'charbot_serve_replies_total{kind="whole"} 1.0' in metrics
        assert 'charbot_serve_requests_total{route="/v1/chat/completions",status="200"} 1.0' in metrics


async def test_a_client_that_goes_away_cancels_its_generation(isolated_env):
    backend = ScriptedBackend(["word " * 200], delay=2.0)  # 0.2 s a word: 40 s in all, far longer than the test waits
    async with serving(backend) as s:
        response = await s.http.post("/v1/chat/completions", json={"stream": True, "messages": [{"role": "user", "content": "Talk"}]})
        assert (await response.content.readline()).startswith(b"data: ")  # the role chunk: generating
        response.close()  # the client hangs up mid-stream
        await until(lambda: s.api.engine.scheduler.inflight == 0, "freed after the client left", timeout=5)
        assert 'charbot_serve_cancelled_total 1.0' in await (await s.http.get("/metrics")).text()


def test_memory_store_of_a_named_conversation_survives_a_restart(isolated_env):
    """The memory key is stable: a restarted server (a new store on the same file) finds the conversation."""
    db = isolated_env / "memory.db"

    async def exchange():
        async with serving(ScriptedBackend([REPLY]), db_path=str(db)) as s:
            await s.openai().chat.completions.create(model="orla", messages=[{"role": "user", "content": "Hi"}], user="u-7")

    asyncio.run(exchange())
    asyncio.run(exchange())
    store = SqliteMemory(db)
    assert store.count_messages("api:orla:u-7") == 4
    store.close()
