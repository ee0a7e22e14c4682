"""The cast on Discord: several characters in one bot and one model, each posting through the channel's
webhook under its own name. The real discord.py client against the fake Discord, ScriptedBackend as the model."""

from __future__ import annotations

import asyncio

import discord
import pytest

from cast_support import guild_with_webhooks, executes, in_character, rick_and_morty, speaker_of, strict
from fakediscord.harness import running_bot


def _messages_by(fake, channel, username: str) -> list[dict]:
    return [m for m in fake.state.messages.values() if m["channel_id"] == channel["id"] and m["author"]["username"] == username and m.get("webhook_id")]


async def test_a_message_naming_morty_is_answered_by_morty_through_the_webhook(fake, isolated_env, tmp_path):
    guild, general, chat, user = guild_with_webhooks(fake.state)
    cast = rick_and_morty(tmp_path / "cast")
    backend = in_character()
    async with running_bot(fake, backend, isolated_env / "m.db", cast_dir=cast, discord_chat_channels=[int(chat["id"])],
                           discord_avatar_urls={"Morty": "https://img.example/morty.png"}) as bot:
        assert bot.engine.backend is backend and set(bot.engine.personas) == {"Rick", "Morty"}  # one model for both
        await fake.say(chat, user, "Morty, where are we?", guild=guild)
        [post] = await fake.wait_for(lambda: executes(fake))
        [created] = fake.state.calls_to("POST", f"/channels/{chat['id']}/webhooks")
        assert created.json["name"] == "Orla"  # named for the bot
        assert post.query["wait"] in ("1", "true") and post.json["username"] == "Morty"
        assert post.json["avatar_url"] == "https://img.example/morty.png" and post.json["content"] == "Morty here."
        assert strict(post.json["allowed_mentions"])
        [said] = _messages_by(fake, chat, "Morty")
        assert said["application_id"] == str(fake.state.app_id)  # an application-owned webhook's message
        assert speaker_of(backend.prompts[-1]) == "Morty"
        assert fake.state.calls_to("POST", f"/channels/{chat['id']}/messages") == []  # nothing posted as the bot
        # Its own webhook message comes back through the gateway and starts nothing.
        await fake.wait_for(lambda: bot.metrics.ignored.labels("author is a bot")._value.get() >= 1)
        assert len(executes(fake)) == 1


async def test_a_reply_to_ricks_webhook_message_is_answered_by_rick_even_outside_chat_channels(fake, isolated_env, tmp_path):
    guild, general, _, user = guild_with_webhooks(fake.state)
    cast = rick_and_morty(tmp_path / "cast", rick=0.0, morty=1.0)  # unaddressed, Morty would speak
    async with running_bot(fake, in_character(), isolated_env / "m.db", cast_dir=cast, discord_scene_turns=1) as bot:
        await fake.say(general, user, "Rick, what is that?", guild=guild)  # opens with a name: addressed
        await fake.wait_for(lambda: _messages_by(fake, general, "Rick"))
        [rick_line] = _messages_by(fake, general, "Rick")
        await fake.say(general, user, "and why would you do that?", guild=guild, reply_to=rick_line)
        await fake.wait_for(lambda: len(executes(fake)) == 2)
        assert [c.json["username"] for c in executes(fake)] == ["Rick", "Rick"]
        # A message that neither names nor replies to anyone, outside the chat channels, is left alone.
        await fake.say(general, user, "nice weather", guild=guild)
        await fake.wait_for(lambda: bot.metrics.ignored.labels("not addressed")._value.get() == 1)
        assert len(executes(fake)) == 2


async def test_a_scene_stops_after_the_configured_character_turns_and_never_runs_without_a_person(fake, isolated_env, tmp_path):
    guild, _, chat, user = guild_with_webhooks(fake.state)
    cast = rick_and_morty(tmp_path / "cast", rick=1.0, morty=1.0)  # both always want to talk
    backend = in_character({"Rick": "Morty, grab the gun.", "Morty": "Aw jeez Rick, okay."})
    async with running_bot(fake, backend, isolated_env / "m.db", cast_dir=cast, discord_chat_channels=[int(chat["id"])],
                           discord_scene_turns=3) as bot:
        warm = backend.calls
        await fake.say(chat, user, "Rick, we need a plan.", guild=guild)
        await fake.wait_for(lambda: bot.metrics.replies.labels("scene")._value.get() == 2 and not bot.scenes._current)
        assert [c.json["username"] for c in executes(fake)] == ["Rick", "Morty", "Rick"]
        assert backend.calls == warm + 3
        # Morty answered Rick's line: in Morty's prompt it is Rick's named turn, after the person's.
        morty_prompt = backend.prompts[warm + 1]
        assert speaker_of(morty_prompt) == "Morty"
        assert [m.content for m in morty_prompt.messages[1:]] == ["Marek: Rick, we need a plan.\nRick: Morty, grab the gun."]
        # One transcript for the channel, every speaker named.
        history = await bot.engine.store.history(f"discord:{chat['id']}")
        assert [(t.role, t.speaker) for t in history] == [("user", "Marek"), ("assistant", "Rick"), ("assistant", "Morty"), ("assistant", "Rick")]
        # The cast's own lines (and any other webhook's) come back through the gateway and start nothing.
        foreign = fake.state.add_webhook(chat, "Captain Hook", by_bot=False)
        other = fake.state.message(chat["id"], {"id": foreign["id"], "username": "Morty", "discriminator": "0000", "bot": True, "avatar": None},
                                   "Rick, answer me!", guild_id=guild["id"])
        await fake.gateway.dispatch("MESSAGE_CREATE", {**other, "webhook_id": foreign["id"]}, guild_id=guild["id"])
        await fake.wait_for(lambda: bot.metrics.ignored.labels("author is a bot")._value.get() >= 4)
        assert backend.calls == warm + 3 and len(executes(fake)) == 3


async def test_without_manage_webhooks_and_in_dms_the_bot_posts_the_bold_name_itself(fake, isolated_env, tmp_path):
    guild, _, chat, user = guild_with_webhooks(fake.state, manage_webhooks=False)
    dm = fake.state.dm_channel(user)
    cast = rick_and_morty(tmp_path / "cast")
    text = "Wubba lubba @everyone <@&77> <@123456789012345678>!"
    async with running_bot(fake, in_character({"Rick": text}), isolated_env / "m.db", cast_dir=cast,
                           discord_chat_channels=[int(chat["id"])], discord_scene_turns=1) as bot:
        asked = await fake.say(chat, user, "Rick, say it", guild=guild)
        [post] = await fake.wait_for_calls("POST", f"/channels/{chat['id']}/messages")
        assert post.json["content"] == f"**Rick**: {text}" and strict(post.json["allowed_mentions"])
        assert str(post.json["message_reference"]["message_id"]) == asked["id"]
        await fake.say(dm, user, "Morty? you there?")
        [dm_post] = await fake.wait_for_calls("POST", f"/channels/{dm['id']}/messages")
        assert dm_post.json["content"] == "**Morty**: Morty here." and strict(dm_post.json["allowed_mentions"])
        # A reply to the bot's bold line goes to the character named in it.
        bold = next(m for m in fake.state.messages.values() if m["content"].startswith("**Rick**") and m["channel_id"] == chat["id"])
        await fake.say(chat, user, "again?", guild=guild, reply_to=bold)
        posts = await fake.wait_for_calls("POST", f"/channels/{chat['id']}/messages", 2)
        assert posts[1].json["content"].startswith("**Rick**: ")
        assert not [c for c in fake.state.calls if "/webhooks" in c.path and c.method != "PUT"]  # never tried
        assert bot.status()["cast"]["characters"]["Rick"]["replies"] == 2
        assert bot.metrics.character_replies.labels("Rick", "plain")._value.get() == 2


async def test_a_deleted_webhook_is_made_again_and_a_full_channel_falls_back(fake, isolated_env, tmp_path):
    guild, general, chat, user = guild_with_webhooks(fake.state)
    for n in range(15):  # #general's webhooks are all taken by other integrations
        fake.state.add_webhook(general, f"feed {n}", by_bot=False)
    cast = rick_and_morty(tmp_path / "cast")
    async with running_bot(fake, in_character(), isolated_env / "m.db", cast_dir=cast, discord_scene_turns=1,
                           discord_chat_channels=[int(chat["id"]), int(general["id"])]) as bot:
        await fake.say(chat, user, "Rick?", guild=guild)
        await fake.wait_for(lambda: len(executes(fake)) == 1)
        [first] = fake.state.webhooks_in(chat["id"])
        # Someone removes it (here through discord.py, as another bot or a moderator's tool would).
        [hook] = await bot.get_channel(int(chat["id"])).webhooks()
        await hook.delete()
        with pytest.raises(discord.NotFound) as gone_already:
            await hook.delete()
        assert gone_already.value.code == 10015 and fake.state.webhooks_in(chat["id"]) == []
        await fake.say(chat, user, "Morty?", guild=guild)
        await fake.wait_for(lambda: len(executes(fake)) == 2)
        gone = [c for c in fake.state.calls if c.path.startswith(f"/webhooks/{first['id']}/") and c.status == 404]
        assert len(gone) == 1  # 10015 Unknown Webhook, then made again
        [second] = fake.state.webhooks_in(chat["id"])
        assert second["id"] != first["id"] and executes(fake, second)[0].json["username"] == "Morty"
        assert len(fake.state.calls_to("POST", f"/channels/{chat['id']}/webhooks")) == 2
        await fake.say(general, user, "Rick, you there?", guild=guild)
        [plain] = await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages")
        refused = [c for c in fake.state.calls if c.path == f"/channels/{general['id']}/webhooks" and c.method == "POST"]
        assert [c.status for c in refused] == [400]  # 30007, once: the channel is not asked again for a while
        assert plain.json["content"] == "**Rick**: Rick here." and strict(plain.json["allowed_mentions"])
        await fake.say(general, user, "Rick, still?", guild=guild)
        await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages", 2)
        assert len([c for c in fake.state.calls if c.path == f"/channels/{general['id']}/webhooks" and c.method == "POST"]) == 1
        assert bot.metrics.errors.labels("discord")._value.get() == 0


async def test_a_thread_is_answered_through_the_parent_channels_webhook(fake, isolated_env, tmp_path):
    guild, general, chat, user = guild_with_webhooks(fake.state)
    thread = fake.state.add_thread(guild, chat, "side quest")
    cast = rick_and_morty(tmp_path / "cast")
    async with running_bot(fake, in_character({"Morty": "Ping @everyone and <@&1>?"}), isolated_env / "m.db", cast_dir=cast,
                           discord_scene_turns=1):
        await fake.say(thread, user, "Morty, in here", guild=guild)
        [post] = await fake.wait_for(lambda: executes(fake))
        [hook] = fake.state.webhooks_in(chat["id"])  # the parent's
        assert post.path.startswith(f"/webhooks/{hook['id']}/") and post.query["thread_id"] == thread["id"]
        assert strict(post.json["allowed_mentions"])
        [said] = _messages_by(fake, thread, "Morty")
        assert said["content"] == "Ping @everyone and <@&1>?"


async def test_the_channel_cast_and_the_webhook_survive_a_restart(fake, isolated_env, tmp_path):
    guild, _, chat, user = guild_with_webhooks(fake.state)
    cast = rick_and_morty(tmp_path / "cast", rick=1.0, morty=0.0)
    options = dict(cast_dir=cast, discord_chat_channels=[int(chat["id"])], discord_scene_turns=1)
    remove = [{"type": 1, "name": "remove", "options": [{"type": 3, "name": "name", "value": "rick"}]}]
    async with running_bot(fake, in_character(), isolated_env / "m.db", **options) as bot:
        assert {c["name"] for c in fake.state.commands} == {"reset", "persona", "ask", "cast"}
        denied = await fake.slash("cast", channel=chat, user=user, guild=guild, options=remove)
        await fake.wait_for(lambda: "response" in denied)
        assert "Manage Channels" in denied["response"]["message"]["content"]
        unknown = [{"type": 1, "name": "add", "options": [{"type": 3, "name": "name", "value": "Summer"}]}]
        nobody = await fake.slash("cast", channel=chat, user=user, guild=guild, options=unknown, permissions=(1 << 4) | (1 << 31))
        await fake.wait_for(lambda: "response" in nobody)
        assert nobody["response"]["message"]["content"] == "No character called 'Summer' in the cast. Characters: Morty, Rick."  # file name order
        done = await fake.slash("cast", channel=chat, user=user, guild=guild, options=remove, permissions=(1 << 4) | (1 << 31))
        await fake.wait_for(lambda: "response" in done)
        assert done["response"]["message"]["content"].startswith("**Rick** leaves the scene.")
        await fake.say(chat, user, "hello?", guild=guild)
        await fake.wait_for(lambda: executes(fake))
    async with running_bot(fake, in_character(), isolated_env / "m.db", **options) as bot:
        listing = await fake.slash("cast", channel=chat, user=user, guild=guild, options=[{"type": 1, "name": "list", "options": []}])
        await fake.wait_for(lambda: "response" in listing)
        assert listing["response"]["message"]["content"] == "In this channel: **Morty** (0% talkative). Also in the cast: Rick."
        await fake.say(chat, user, "anyone?", guild=guild)  # Rick, the talkative one, is not in this channel any more
        await fake.wait_for(lambda: len(executes(fake)) == 2)
        assert [c.json["username"] for c in executes(fake)] == ["Morty", "Morty"]
        # The webhook was found again by listing the channel's, not made again.
        assert len(fake.state.calls_to("GET", f"/channels/{chat['id']}/webhooks")) == 2
        assert len(fake.state.calls_to("POST", f"/channels/{chat['id']}/webhooks")) == 1
        assert bot.scenes.poster.created == 0


async def test_reset_ends_the_scene_and_healthz_shows_the_cast(fake, isolated_env, tmp_path):
    import aiohttp

    guild, _, chat, user = guild_with_webhooks(fake.state)
    cast = rick_and_morty(tmp_path / "cast", rick=1.0, morty=1.0)
    backend = in_character()
    async with running_bot(fake, backend, isolated_env / "m.db", cast_dir=cast, discord_chat_channels=[int(chat["id"])],
                           discord_scene_turns=2, health=True) as bot:
        warm = backend.calls
        backend.release = asyncio.Event()  # Rick's first line waits to be generated
        await fake.say(chat, user, "Rick, tell me a story", guild=guild)
        await fake.wait_for(lambda: backend.running == 1)
        reset = await fake.slash("reset", channel=chat, user=user, guild=guild, permissions=(1 << 13) | (1 << 31))
        await fake.wait_for(lambda: "response" in reset)
        backend.release.set()
        await fake.wait_for(lambda: bot.metrics.replies.labels("message")._value.get() == 1 and not bot.scenes._current)
        assert backend.calls == warm + 1 and [c.json["username"] for c in executes(fake)] == ["Rick"]  # Morty never took his turn
        await fake.wait_for(lambda: bot.health_port)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{bot.health_port}/healthz") as response:
                body = await response.json()
            async with http.get(f"http://127.0.0.1:{bot.health_port}/metrics") as response:
                metrics = await response.text()
        assert body["cast"]["characters"]["Rick"]["replies"] == 1 and body["cast"]["characters"]["Morty"]["replies"] == 0
        assert body["cast"]["scene_turns"] == 2
        assert 'charbot_discord_character_replies_total{character="Rick",via="webhook"} 1.0' in metrics


async def test_a_cards_embedded_picture_is_served_for_discord_to_fetch_as_the_avatar(fake, isolated_env, tmp_path):
    import aiohttp

    from card_files import png_image, with_card_chunks
    from cast_support import card

    guild, _, chat, user = guild_with_webhooks(fake.state)
    cast = rick_and_morty(tmp_path / "cast")
    picture = with_card_chunks(png_image(), chara=card("Jerry"))
    (cast / "jerry.png").write_bytes(picture)
    async with running_bot(fake, in_character(), isolated_env / "m.db", cast_dir=cast, discord_scene_turns=1, health=True,
                           discord_chat_channels=[int(chat["id"])], discord_public_url="https://bot.example") as bot:
        await fake.say(chat, user, "Jerry, hi", guild=guild)
        [post] = await fake.wait_for(lambda: executes(fake))
        assert post.json["username"] == "Jerry" and post.json["avatar_url"] == "https://bot.example/avatars/jerry.png"
        await fake.wait_for(lambda: bot.health_port)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{bot.health_port}/avatars/jerry.png") as response:
                assert response.status == 200 and response.content_type == "image/png" and await response.read() == picture
            async with http.get(f"http://127.0.0.1:{bot.health_port}/avatars/rick.png") as response:
                assert response.status == 404  # a JSON card has no picture
