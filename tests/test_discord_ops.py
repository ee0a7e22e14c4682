"""Operations around the bot: health page, metrics, intents, command sync, streaming, load limits,
gateway compression — the real discord.py client against the fake Discord."""

from __future__ import annotations

import asyncio
import json
import logging
import zlib

import aiohttp
import pytest

from charbot.errors import BackendUnavailable, BusyError, CharbotError
from conftest import ScriptedBackend
from fakediscord import FakeDiscord, FakeState
from fakediscord.harness import running_bot


@pytest.fixture
def world(fake):
    guild = fake.state.add_guild()
    return guild, fake.state.channel(guild, "general"), fake.state.user("marek")


class SlowLoadBackend(ScriptedBackend):
    """Loading takes until the test says so, like a big model."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.release = asyncio.Event()

    async def load(self) -> None:
        await self.release.wait()
        self.ready = True


async def _get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}{path}") as response:
            return response.status, await response.text()


class CachingBackend(ScriptedBackend):
    """A backend whose prompt cache has counters to show (the llama.cpp backend's, in shape)."""

    def cache_stats(self) -> dict[str, int]:
        return {"hits": 3, "misses": 1, "saved_tokens": 900, "reused_tokens": 1200, "evicted_bytes": 0, "stored_bytes": 4096}


async def test_prompt_cache_counters_are_on_the_metrics_page(fake, isolated_env):
    async with running_bot(fake, CachingBackend(), isolated_env / "m.db", health=True) as bot:
        await fake.wait_for(lambda: bot.health_port)
        status, metrics = await _get(bot.health_port, "/metrics")
        assert status == 200
        for line in ("charbot_prompt_cache_hits_total 3.0", "charbot_prompt_cache_misses_total 1.0",
                     "charbot_prompt_cache_saved_tokens_total 900.0", "charbot_prompt_cache_evicted_bytes_total 0.0",
                     "charbot_prompt_cache_stored_bytes 4096.0"):
            assert line in metrics.splitlines(), line


async def test_healthz_turns_200_only_after_ready_and_model_load(fake, world, isolated_env, monkeypatch):
    secret = "s3cret-token-value"
    fake.state.token = secret
    monkeypatch.setenv("DISCORD_TOKEN", secret)
    backend = SlowLoadBackend(["Hello there."])
    async with running_bot(fake, backend, isolated_env / "m.db", health=True, wait_ready=False) as bot:
        await fake.wait_for(lambda: bot.health_port)
        assert await _get(bot.health_port, "/") == (200, "I am alive")
        status, body = await _get(bot.health_port, "/healthz")
        assert status == 503 and json.loads(body)["backend_ready"] is False
        assert fake.gateway.identifies == 0  # not online while the model loads
        backend.release.set()
        await fake.wait_for(lambda: bot.is_ready())
        status, body = await _get(bot.health_port, "/healthz")
        data = json.loads(body)
        assert status == 200 and data["gateway_connected"] and data["backend_ready"] and data["queue_depth"] == 0
        guild, general, user = world
        await fake.say(general, user, f"<@{bot.user.id}> hi", guild=guild, mentions=[fake.state.bot_user])
        await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages")
        await fake.wait_for(lambda: bot.metrics.replies.labels("message")._value.get() == 1)
        status, metrics = await _get(bot.health_port, "/metrics")
        assert status == 200
        assert "charbot_discord_messages_seen_total" in metrics and "charbot_discord_replies_total{kind=\"message\"} 1.0" in metrics
        assert "charbot_discord_reply_seconds_count 1.0" in metrics and "charbot_discord_tokens_generated_total 2.0" in metrics
        for path in ("/", "/healthz", "/metrics"):
            assert secret not in (await _get(bot.health_port, path))[1]
        await fake.gateway.drop(1011)
        # Between the drop and the RESUME the page may say 503; afterwards it is 200 again.
        await fake.wait_for(lambda: fake.gateway.resumes == 1)
        await fake.wait_for(lambda: bot.gateway_connected())
        assert (await _get(bot.health_port, "/healthz"))[0] == 200
    assert (await asyncio.wait_for(_status_after_close(bot), 5)) is False


async def _status_after_close(bot) -> bool:
    return bot.status()["ready"]


async def test_two_bots_have_their_own_metrics(fake, world, isolated_env):
    async with running_bot(fake, ScriptedBackend(), isolated_env / "a.db") as a:
        first = a.metrics
    async with running_bot(fake, ScriptedBackend(), isolated_env / "b.db") as b:
        assert b.metrics.registry is not first.registry


async def test_missing_message_content_intent_is_a_one_line_error(isolated_env):
    async with FakeDiscord(FakeState(message_content_enabled=False)) as fake:
        with pytest.raises(CharbotError) as caught:
            async with running_bot(fake, ScriptedBackend(), isolated_env / "m.db"):
                pass
    message = str(caught.value)
    assert "4014" in message and "Message Content Intent" in message and "\n" not in message
    assert fake.gateway.closes == [4014]


async def test_without_the_intent_only_mentions_and_dms_carry_text(isolated_env):
    async with FakeDiscord(FakeState(message_content_enabled=False)) as fake:
        guild = fake.state.add_guild()
        chat, user = fake.state.channel(guild, "chat"), fake.state.user("marek")
        backend = ScriptedBackend(["Heard you."])
        async with running_bot(fake, backend, isolated_env / "m.db", message_content=False, discord_chat_channels=[int(chat["id"])]) as bot:
            warm = backend.calls
            await fake.say(chat, user, "words the bot may not read", guild=guild)
            # Counted once the bot has decided, for good, that there is nothing to answer.
            await fake.wait_for(lambda: bot.metrics.ignored.labels("no text")._value.get() >= 1)
            assert fake.state.calls_to("POST", "/messages") == [] and backend.calls == warm
            assert bot.metrics.ignored.labels("no text")._value.get() == 1
            await fake.say(chat, user, f"<@{bot.user.id}> but this one", guild=guild, mentions=[fake.state.bot_user])
            await fake.wait_for_calls("POST", f"/channels/{chat['id']}/messages")
            assert "but this one" in backend.prompts[-1].messages[-1].content


async def test_commands_sync_only_when_they_change(fake, isolated_env):
    db = isolated_env / "m.db"
    async with running_bot(fake, ScriptedBackend(), db) as bot:
        assert bot.commands_synced is True
        hash_file = bot.command_hash_path()
    async with running_bot(fake, ScriptedBackend(), db) as bot:
        assert bot.commands_synced is False
    assert len(fake.state.calls_to("PUT", "/commands")) == 1
    hash_file.write_text("stale\n")
    async with running_bot(fake, ScriptedBackend(), db) as bot:
        assert bot.commands_synced is True
    assert len(fake.state.calls_to("PUT", "/commands")) == 2


async def test_streaming_edits_at_most_once_a_second(fake, world, isolated_env):
    guild, general, user = world
    words = " ".join(f"word{i}." for i in range(30))
    backend = ScriptedBackend([words], delay=1.5)  # 0.15 s per streamed piece: ~4.5 s of streaming
    async with running_bot(fake, backend, isolated_env / "m.db", discord_stream=True) as bot:
        await fake.say(general, user, f"<@{bot.user.id}> talk slowly", guild=guild, mentions=[fake.state.bot_user])
        [post] = await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages")
        await fake.wait_for(lambda: bot.metrics.replies.labels("message")._value.get() == 1, timeout=15)
        edits = fake.state.calls_to("PATCH", f"/channels/{general['id']}/messages/")
        assert len(edits) >= 3
        times = [post.at] + [e.at for e in edits]
        assert all(b - a >= 0.95 for a, b in zip(times, times[1:]))
        assert edits[-1].json["content"] == words.strip()
        assert len(fake.state.calls_to("POST", f"/channels/{general['id']}/messages")) == 1


async def test_queue_limit_turns_requests_away_with_a_busy_reply(fake, world, isolated_env):
    guild, general, user = world
    backend = ScriptedBackend(["Done."])
    async with running_bot(fake, backend, isolated_env / "m.db", discord_max_inflight=1, discord_max_queue=0) as bot:
        backend.release = asyncio.Event()  # the first generation lasts until the second was turned away
        mention = dict(guild=guild, mentions=[fake.state.bot_user])
        other = fake.state.user("ines")
        await fake.say(general, user, f"<@{bot.user.id}> first", **mention)
        await fake.wait_for(lambda: bot.gate.inflight == 1)
        await fake.say(general, other, f"<@{bot.user.id}> second", **mention)
        await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages")
        backend.release.set()
        posts = await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages", 2)
        assert [p.json["content"] for p in posts] == [BusyError.user_message, "Done."]


async def test_cooldown_per_user(fake, world, isolated_env):
    guild, general, user = world
    async with running_bot(fake, ScriptedBackend(["Aye."]), isolated_env / "m.db", discord_cooldown_seconds=30) as bot:
        mention = dict(guild=guild, mentions=[fake.state.bot_user])
        await fake.say(general, user, f"<@{bot.user.id}> one", **mention)
        await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages")
        await fake.say(general, user, f"<@{bot.user.id}> two", **mention)
        posts = await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages", 2)
        assert posts[1].json["content"].startswith("One at a time")
        assert bot.metrics.busy.labels("cooldown")._value.get() == 1


class _ZlibStream:
    """discord.py's own zlib-stream reader (it only defines it when zstandard is missing)."""

    COMPRESSION_TYPE = "zlib-stream"

    def __init__(self):
        self.buffer, self.context = bytearray(), zlib.decompressobj()

    def decompress(self, data):
        self.buffer.extend(data)
        if len(data) < 4 or data[-4:] != b"\x00\x00\xff\xff":
            return None
        msg, self.buffer = self.context.decompress(self.buffer), bytearray()
        return msg.decode()


@pytest.mark.parametrize("compression", ["zlib-stream", "zstd-stream"])
async def test_gateway_compression(fake, world, isolated_env, monkeypatch, compression):
    import discord.utils

    if compression == "zlib-stream":
        monkeypatch.setattr(discord.utils, "_ActiveDecompressionContext", _ZlibStream)
    elif discord.utils._ActiveDecompressionContext.COMPRESSION_TYPE != "zstd-stream":
        pytest.skip("discord.py has no zstd here")
    guild, general, user = world
    async with running_bot(fake, ScriptedBackend(["Packed tight."]), isolated_env / "m.db") as bot:
        await fake.say(general, user, f"<@{bot.user.id}> hi", guild=guild, mentions=[fake.state.bot_user])
        [post] = await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages")
        assert post.json["content"] == "Packed tight."
    assert fake.gateway.compressions == [compression]


async def test_token_never_reaches_the_log(fake, world, isolated_env, caplog):
    caplog.set_level(logging.DEBUG)
    guild, general, user = world
    fake.state.token = "tok-abcdef-1234567890"
    async with running_bot(fake, ScriptedBackend(), isolated_env / "m.db") as bot:
        await fake.say(general, user, f"<@{bot.user.id}> hi", guild=guild, mentions=[fake.state.bot_user])
        await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages")
    assert "tok-abcdef-1234567890" not in caplog.text


async def test_two_shards_split_the_guilds(isolated_env):
    async with FakeDiscord(FakeState(shards=2)) as fake:
        guilds = [fake.state.add_guild(f"g{i}") for i in range(6)]
        user = fake.state.user("marek")
        async with running_bot(fake, ScriptedBackend(["Aye."]), isolated_env / "m.db", discord_shard_count=2) as bot:
            assert sorted(s.shard for s in fake.gateway.sessions.values()) == [(0, 2), (1, 2)]
            assert len(bot.guilds) == 6 and sorted(bot.shards) == [0, 1]
            assert {g.shard_id for g in bot.guilds} == {0, 1}
            for guild in guilds:
                await fake.say(fake.state.channel(guild, "general"), user, f"<@{bot.user.id}> hi", guild=guild, mentions=[fake.state.bot_user])
            for guild in guilds:
                await fake.wait_for_calls("POST", f"/channels/{fake.state.channel(guild, 'general')['id']}/messages")


async def test_gateway_reconnect_request_resumes(fake, world, isolated_env):
    guild, general, user = world
    async with running_bot(fake, ScriptedBackend(["Back."]), isolated_env / "m.db") as bot:
        await fake.gateway.request_reconnect()
        await fake.wait_for(lambda: fake.gateway.resumes == 1)
        await fake.say(general, user, f"<@{bot.user.id}> hi", guild=guild, mentions=[fake.state.bot_user])
        [post] = await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages")
        assert post.json["content"] == "Back." and fake.gateway.identifies == 1


class UnreachableAtStartBackend(ScriptedBackend):
    """A remote server that is down when the bot starts and comes up later."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.up = False
        self.status = "not started"

    async def load(self) -> None:
        if not self.up:
            self.status = "unavailable: cannot reach http://127.0.0.1:9/v1 (connection refused)"
            from charbot.errors import BackendUnavailable

            raise BackendUnavailable("cannot reach http://127.0.0.1:9/v1 (connection refused)")
        self.ready = True
        self.status = "ready"

    async def complete(self, prompt, settings):
        if not self.up:
            from charbot.errors import BackendUnavailable

            raise BackendUnavailable("cannot reach http://127.0.0.1:9/v1 (connection refused)")
        return await super().complete(prompt, settings)


async def test_backend_down_at_start_goes_online_and_reports_until_ready(fake, world, isolated_env, monkeypatch):
    backend = UnreachableAtStartBackend(["Back again."])
    monkeypatch.setattr("charbot.discord.bot.CharBot._keep_warming.__defaults__", (0.05, 0.2))
    async with running_bot(fake, backend, isolated_env / "m.db", health=True) as bot:
        await fake.wait_for(lambda: bot.health_port)
        status, body = await _get(bot.health_port, "/healthz")
        data = json.loads(body)
        assert status == 503 and data["gateway_connected"] and not data["backend_ready"]
        assert "connection refused" in data["backend_status"]
        guild, general, user = world
        await fake.say(general, user, f"<@{bot.user.id}> hi", guild=guild, mentions=[fake.state.bot_user])
        [notice] = await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages")
        assert notice.json["content"] == BackendUnavailable.user_message  # a short error, the bot stays up
        backend.up = True
        await fake.wait_for(lambda: backend.ready, timeout=5)
        status, body = await _get(bot.health_port, "/healthz")
        assert status == 200 and json.loads(body)["backend_status"] == "ready"
        await fake.say(general, user, f"<@{bot.user.id}> again", guild=guild, mentions=[fake.state.bot_user])
        calls = await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages", count=2)
        assert calls[-1].json["content"] == "Back again."
