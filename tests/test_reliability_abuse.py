"""Hostile output and hostile users, with the real discord.py client against the loopback fake Discord:
no pings from model output, no secrets anywhere, permissions and allow/block lists, odd messages."""

from __future__ import annotations

import json
import logging

import aiohttp
import pytest
from aiohttp import web

from charbot.discord.cogs.admin import REFUSED
from charbot.errors import BackendUnavailable, ConfigError
from conftest import ScriptedBackend
from fakediscord.harness import running_bot

PINGS = "Ahoy @everyone and @here! <@&{role}> <@{user}> <@!{user}> listen up."


@pytest.fixture
def world(fake):
    guild = fake.state.add_guild()
    return guild, fake.state.channel(guild, "general"), fake.state.channel(guild, "chat"), fake.state.user("marek")


def _mention(fake, guild):
    return dict(guild=guild, mentions=[fake.state.bot_user])


def _outgoing(fake) -> list:
    """Every REST call that puts text on Discord (messages, edits, interaction replies, follow-ups)."""
    out = []
    for call in fake.state.calls:
        body = call.json if isinstance(call.json, dict) else {}
        payload = body.get("data") if "/callback" in call.path else body
        if isinstance(payload, dict) and "content" in payload:
            out.append((call, payload))
    return out


def _assert_pings_nobody(payload: dict) -> None:
    allowed = payload.get("allowed_mentions")
    assert allowed is not None, f"no allowed_mentions on {payload}"
    assert allowed.get("parse") == [], allowed
    assert not allowed.get("users") and not allowed.get("roles"), allowed
    assert allowed.get("replied_user", False) is False, allowed


async def test_model_output_full_of_mentions_never_pings_anyone(fake, world, isolated_env):
    guild, general, chat, user = world
    role = fake.state.add_role(guild, "crew")
    text = PINGS.format(role=role["id"], user=user["id"])
    long_text = " ".join([text] * 60)  # > 2000 chars: split over several messages
    backend = ScriptedBackend(respond=lambda prompt: long_text if "a lot" in prompt.messages[-1].content else text)
    async with running_bot(fake, backend, isolated_env / "m.db", discord_chat_channels=[int(chat["id"])]) as bot:
        await fake.say(general, user, f"<@{bot.user.id}> say hi to everyone", **_mention(fake, guild))
        await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages")
        await fake.say(chat, user, "say it a lot", guild=guild)
        await fake.wait_for(lambda: bot.metrics.replies.labels("message")._value.get() == 2)
        ask = await fake.slash("ask", channel=general, user=user, guild=guild, options=[{"name": "question", "type": 3, "value": "who's here?"}])
        await fake.wait_for(lambda: ask.get("response", {}).get("message", {}).get("content") == text)
        # The user's own text in a refusal or notice is echoed too: /persona with a pinging name.
        bad = await fake.slash("persona", channel=general, user=user, guild=guild, permissions=(1 << 5) | (1 << 31),
                               options=[{"name": "name", "type": 3, "value": "@everyone <@&" + role["id"] + ">"}])
        await fake.wait_for(lambda: "response" in bad)
        backend.fail_next = 1
        await fake.say(general, user, f"<@{bot.user.id}> again @everyone", **_mention(fake, guild))
        await fake.wait_for(lambda: bot.metrics.errors.labels("backend")._value.get() == 1)
        await fake.wait_for(lambda: len(fake.state.calls_to("POST", f"/channels/{general['id']}/messages")) == 2)
    sent = _outgoing(fake)
    with_content = [p for _, p in sent if p.get("content")]
    assert len(with_content) >= 6  # reply, 3+ chunks, /ask edit, /persona refusal, error notice
    assert any("@everyone" in p["content"] for p in with_content)  # the text is kept, only the ping is disabled
    for _, payload in sent:
        _assert_pings_nobody(payload)


async def test_streamed_edits_ping_nobody(fake, world, isolated_env):
    guild, general, _, user = world
    text = PINGS.format(role=123, user=user["id"]) + " " + " ".join(f"word{i}." for i in range(12))
    backend = ScriptedBackend([text], delay=1.2)
    async with running_bot(fake, backend, isolated_env / "m.db", discord_stream=True) as bot:
        await fake.say(general, user, f"<@{bot.user.id}> stream it", **_mention(fake, guild))
        await fake.wait_for(lambda: bot.metrics.replies.labels("message")._value.get() == 1, timeout=15)
    edits = [c for c in fake.state.calls if c.method == "PATCH"]
    assert edits and all("@everyone" in c.json["content"] for c in edits)
    for _, payload in _outgoing(fake):
        _assert_pings_nobody(payload)


# --- secrets -------------------------------------------------------------------------------------------

DISCORD_SECRET = "MTIz.discord-secret-token-4f9a"
HF_SECRET = "hf_secretTokenValue0123456789abcdef"


async def _leaky_server(seen: list[str]) -> web.AppRunner:
    """An OpenAI-compatible server that is hostile: it echoes the Authorization header in its errors."""

    async def models(request):
        return web.json_response({"object": "list", "data": [{"id": "leaky", "object": "model", "owned_by": "x"}]})

    async def chat(request):
        body = await request.text()
        auth = request.headers.get("Authorization", "")
        seen.append(auth)
        if "LEAK-NOW" in body:
            return web.json_response({"error": {"message": f"invalid credentials {auth}", "type": "auth"}}, status=500)
        return web.json_response({
            "id": "c1", "object": "chat.completion", "created": 0, "model": "leaky",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Aye, sprat."}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        })

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


async def _get(port: int, path: str) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}{path}") as response:
            return await response.text()


async def test_tokens_never_reach_logs_errors_replies_or_pages(fake, world, isolated_env, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    guild, general, _, user = world
    fake.state.token = DISCORD_SECRET
    monkeypatch.setenv("DISCORD_TOKEN", DISCORD_SECRET)
    monkeypatch.setenv("HF_TOKEN", HF_SECRET)
    seen: list[str] = []
    server = await _leaky_server(seen)
    try:
        base = f"http://127.0.0.1:{server.addresses[0][1]}/v1"
        monkeypatch.setenv("CHARBOT_BACKEND", "remote")
        async with running_bot(fake, None, isolated_env / "m.db", health=True, base_url=base,
                               api_key_env="HF_TOKEN", remote_max_retries=0, log_level="DEBUG") as bot:
            await fake.say(general, user, f"<@{bot.user.id}> hello", **_mention(fake, guild))
            await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages", timeout=15)
            await fake.say(general, user, f"<@{bot.user.id}> LEAK-NOW", **_mention(fake, guild))
            posts = await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages", 2, timeout=15)
            await fake.gateway.drop(4000)  # the RESUME carries the token again
            await fake.wait_for(lambda: fake.gateway.resumes == 1 and bot.gateway_connected())
            pages = [await _get(bot.health_port, p) for p in ("/", "/healthz", "/metrics")]
    finally:
        await server.cleanup()
    assert seen and all(HF_SECRET in s for s in seen)  # the secret really was used, so it could have leaked
    assert posts[1].json["content"] == BackendUnavailable.user_message
    assert "answered HTTP 500" in caplog.text  # the failure is logged ...
    outgoing = json.dumps([c.json for c in fake.state.calls])
    for secret in (DISCORD_SECRET, HF_SECRET):
        assert secret not in caplog.text  # ... without the token
        assert secret not in outgoing
        assert all(secret not in page for page in pages)


async def test_rejected_discord_token_error_names_the_variable_not_the_value(fake, isolated_env, monkeypatch):
    wrong = "wrong-token-value-0xdeadbeef"
    monkeypatch.setenv("DISCORD_TOKEN", wrong)
    from charbot.config import load_settings
    from charbot.discord.bot import CharBot
    from charbot.discord.runner import serve
    from charbot.factory import build_engine

    settings = load_settings(discord_api_url=fake.api_url, discord_gateway_url=fake.gateway_url, db_path=isolated_env / "m.db")
    bot = CharBot(build_engine(settings, backend=ScriptedBackend()), settings, guild_ready_timeout=0.05, identify_delay=0)
    with pytest.raises(ConfigError) as caught:
        await serve(bot, wrong, health=False)
    assert "DISCORD_TOKEN" in str(caught.value) and wrong not in str(caught.value)


# --- permissions and allow/block lists -------------------------------------------------------------------


async def test_admin_commands_need_the_permission(fake, world, isolated_env, sample_card, tmp_path):
    guild, general, _, user = world
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "bram.json").write_text(sample_card.model_copy(update={"data": sample_card.data.model_copy(update={"name": "Bram Salt"})}).model_dump_json())
    async with running_bot(fake, ScriptedBackend(["Aye."]), isolated_env / "m.db", persona_dir=cards) as bot:
        conv = f"discord:{general['id']}"
        await fake.say(general, user, f"<@{bot.user.id}> remember the buoy", **_mention(fake, guild))
        await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages")
        await fake.wait_for(lambda: bot.engine.store.sync.count_messages(conv) == 2)  # remembered once sent
        member = (1 << 31) | (1 << 11)  # use commands, send messages: an ordinary member
        reset = await fake.slash("reset", channel=general, user=user, guild=guild, permissions=member)
        switch = await fake.slash("persona", channel=general, user=user, guild=guild, permissions=member,
                                  options=[{"name": "name", "type": 3, "value": "Bram Salt"}])
        await fake.wait_for(lambda: "response" in reset and "response" in switch)
        assert "Manage Messages" in reset["response"]["message"]["content"] and reset["response"]["message"]["flags"] & 64
        assert "Manage Server" in switch["response"]["message"]["content"]
        assert bot.engine.store.sync.count_messages(conv) == 2 and (await bot.engine.persona_for(conv)).name != "Bram Salt"
        # In a DM the conversation is the user's own: they may reset it.
        dm = fake.state.dm_channel(user)
        await fake.say(dm, user, "hello")
        await fake.wait_for_calls("POST", f"/channels/{dm['id']}/messages")
        own = await fake.slash("reset", channel=dm, user=user)
        await fake.wait_for(lambda: "response" in own)
        assert own["response"]["message"]["content"] == "Forgot 2 messages. Fresh start."


async def test_blocked_users_roles_and_channels_get_nothing_from_messages_or_commands(fake, world, isolated_env):
    guild, general, chat, user = world
    blocked, vip = fake.state.user("troll"), fake.state.user("ines")
    role = fake.state.add_role(guild, "muted")
    backend = ScriptedBackend(["Aye."])
    async with running_bot(fake, backend, isolated_env / "m.db", discord_blocked_users=[int(blocked["id"])],
                           discord_blocked_roles=[int(role["id"])], discord_blocked_channels=[int(chat["id"])]) as bot:
        warm = backend.calls
        await fake.say(general, blocked, f"<@{bot.user.id}> hi", **_mention(fake, guild))
        await fake.say(general, user, f"<@{bot.user.id}> hi", guild=guild, mentions=[fake.state.bot_user],
                       member=fake.state.member(user, (role["id"],)))
        await fake.say(chat, vip, f"<@{bot.user.id}> hi", **_mention(fake, guild))
        asks = [
            await fake.slash("ask", channel=general, user=blocked, guild=guild, options=[{"name": "question", "type": 3, "value": "q"}]),
            await fake.slash("ask", channel=chat, user=vip, guild=guild, options=[{"name": "question", "type": 3, "value": "q"}]),
            await fake.slash("ask", channel=general, user=user, guild=guild, member_roles=(role["id"],),
                             options=[{"name": "question", "type": 3, "value": "q"}]),
            await fake.slash("reset", channel=general, user=blocked, guild=guild, permissions=(1 << 13) | (1 << 31)),
        ]
        await fake.wait_for(lambda: all("response" in a for a in asks))
        await fake.wait_for(lambda: bot.metrics.messages_seen._value.get() == 3)
        assert all(a["response"]["message"]["content"] == REFUSED and a["response"]["message"]["flags"] & 64 for a in asks)
        assert backend.calls == warm and fake.state.calls_to("POST", "/messages") == []
        # An unlisted user in an unlisted channel is still answered.
        await fake.say(general, vip, f"<@{bot.user.id}> hi", **_mention(fake, guild))
        [post] = await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages")
        assert post.json["content"] == "Aye."


async def test_allow_list_admits_only_who_it_names(fake, world, isolated_env):
    guild, general, _, user = world
    other = fake.state.user("ines")
    backend = ScriptedBackend(["Aye."])
    async with running_bot(fake, backend, isolated_env / "m.db", discord_allowed_users=[int(user["id"])]) as bot:
        await fake.say(general, other, f"<@{bot.user.id}> me?", **_mention(fake, guild))
        await fake.say(general, user, f"<@{bot.user.id}> me!", **_mention(fake, guild))
        [post] = await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages")
        await fake.wait_for(lambda: bot.metrics.messages_seen._value.get() >= 2)
        assert "me!" in backend.prompts[-1].messages[-1].content
        assert bot.metrics.ignored.labels("user not in allow list")._value.get() == 1


async def test_dms_can_be_switched_off(fake, world, isolated_env):
    _, _, _, user = world
    dm = fake.state.dm_channel(user)
    backend = ScriptedBackend(["Aye."])
    async with running_bot(fake, backend, isolated_env / "m.db", discord_allow_dms=False) as bot:
        warm = backend.calls
        await fake.say(dm, user, "hello in private")
        ask = await fake.slash("ask", channel=dm, user=user, options=[{"name": "question", "type": 3, "value": "q"}])
        await fake.wait_for(lambda: "response" in ask)
        await fake.wait_for(lambda: bot.metrics.ignored.labels("dms disabled")._value.get() == 2)
        assert ask["response"]["message"]["content"] == REFUSED
        assert backend.calls == warm and fake.state.calls_to("POST", "/messages") == []


# --- odd messages --------------------------------------------------------------------------------------


async def test_odd_messages_are_handled(fake, world, isolated_env):
    guild, general, chat, user = world
    backend = ScriptedBackend(["Aye."])
    async with running_bot(fake, backend, isolated_env / "m.db", discord_chat_channels=[int(chat["id"])]) as bot:
        warm = backend.calls
        at = f"<@{bot.user.id}>"
        # Nothing to answer: a bare mention, zero-width characters, an attachment with no text.
        await fake.say(general, user, at, **_mention(fake, guild))
        await fake.say(general, user, f"{at} \u200b\u200c\u2060\ufeff\u200b", **_mention(fake, guild))
        await fake.say(chat, user, "\u200b\u202e\x00", guild=guild)
        msg = fake.state.message(chat["id"], user, "", guild_id=guild["id"], member=fake.state.member(user))
        msg["attachments"] = [{"id": str(fake.state.snowflake()), "filename": "boat.png", "size": 10, "url": "http://x/boat.png",
                               "proxy_url": "http://x/boat.png", "content_type": "image/png"}]
        await fake.gateway.dispatch("MESSAGE_CREATE", msg, guild_id=guild["id"])
        await fake.wait_for(lambda: bot.metrics.ignored.labels("no text")._value.get() == 4)
        assert backend.calls == warm and fake.state.calls_to("POST", "/messages") == []
        # Control characters are dropped before the model and the memory see the text.
        await fake.say(general, user, f"{at} hi\x00\x07 there\u200b\u202e", **_mention(fake, guild))
        await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages")
        assert backend.prompts[-1].messages[-1].content.endswith("hi there")
        stored = await fake.wait_for(lambda: bot.engine.store.sync.history(f"discord:{general['id']}"))  # remembered once sent
        assert stored[0].content == "hi there"
        # Oversized (Nitro's 4000 characters, no spaces to split on): answered once, within Discord's limit.
        await fake.say(general, user, f"{at} " + "x" * 4000, **_mention(fake, guild))
        posts = await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages", 2)
        assert posts[1].json["content"] == "Aye."


async def test_oversized_message_larger_than_the_context_is_still_answered(fake, world, isolated_env):
    guild, general, _, user = world
    backend = ScriptedBackend(["Too long, friend; in short?"], context_window=256)
    async with running_bot(fake, backend, isolated_env / "m.db") as bot:
        words = " ".join(f"w{i}" for i in range(900))  # ~4000 characters, far more than 256 tokens
        await fake.say(general, user, f"<@{bot.user.id}> {words}", **_mention(fake, guild))
        [post] = await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages")
        assert post.json["content"] == "Too long, friend; in short?"
        shown = backend.prompts[-1].messages[-1].content
        assert backend.count_tokens(shown) <= 256
