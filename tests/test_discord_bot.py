"""`charbot discord` end to end: the real discord.py client against the loopback fake Discord, with
ScriptedBackend as the model."""

from __future__ import annotations

import pytest

from conftest import ScriptedBackend
from fakediscord.harness import running_bot


@pytest.fixture
def world(fake):
    """A guild with #general and #chat, and a user."""
    state = fake.state
    guild = state.add_guild()
    user = state.user("marek")
    return guild, state.channel(guild, "general"), state.channel(guild, "chat"), user


def _replies(fake, channel):
    return [c for c in fake.state.calls_to("POST", f"/channels/{channel['id']}/messages")]


def _ignored(bot, reason: str) -> float:
    return bot.metrics.ignored.labels(reason)._value.get()


async def test_mention_gets_typing_then_a_reply(fake, world, isolated_env):
    guild, general, _, user = world
    backend = ScriptedBackend(["The lamp is lit, friend."])
    async with running_bot(fake, backend, isolated_env / "m.db") as bot:
        msg = await fake.say(general, user, f"<@{bot.user.id}> is the lamp lit?", guild=guild, mentions=[fake.state.bot_user])
        [post] = await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages")
        typing = fake.state.calls_to("POST", f"/channels/{general['id']}/typing")
        assert typing and typing[0].at <= post.at
        assert post.json["content"] == "The lamp is lit, friend."
        assert str(post.json["message_reference"]["message_id"]) == msg["id"]
        # The model saw the text without the mention, with the speaker named.
        last_user = [m for m in backend.prompts[-1].messages if m.role == "user"][-1]
        assert "is the lamp lit?" in last_user.content and f"<@{bot.user.id}>" not in last_user.content
        assert "Marek" in last_user.content


async def test_unmentioned_guild_messages_are_ignored_outside_chat_channels(fake, world, isolated_env):
    guild, general, chat, user = world
    backend = ScriptedBackend(["Fog on the water."])
    async with running_bot(fake, backend, isolated_env / "m.db", discord_chat_channels=[int(chat["id"])]) as bot:
        warm = backend.calls  # the warm-up generation
        await fake.say(general, user, "anyone around?", guild=guild)
        await fake.say(chat, user, "what's the weather?", guild=guild)
        [post] = await fake.wait_for_calls("POST", f"/channels/{chat['id']}/messages")
        assert post.json["content"] == "Fog on the water."
        # Counted as ignored only once the bot has decided, for good, not to answer it.
        await fake.wait_for(lambda: _ignored(bot, "not addressed") >= 1)
        assert _replies(fake, general) == []
        assert backend.calls == warm + 1
        assert _ignored(bot, "not addressed") == 1


async def test_dm_is_answered_and_bots_never_are(fake, world, isolated_env):
    guild, general, chat, user = world
    other_bot = fake.state.user("gull", bot=True)
    dm = fake.state.dm_channel(user)
    backend = ScriptedBackend(["Keep your boots dry."])
    async with running_bot(fake, backend, isolated_env / "m.db", discord_chat_channels=[int(chat["id"])]) as bot:
        warm = backend.calls
        await fake.say(chat, other_bot, "beep", guild=guild)
        await fake.say(dm, user, "any advice?")
        [post] = await fake.wait_for_calls("POST", f"/channels/{dm['id']}/messages")
        assert post.json["content"] == "Keep your boots dry."
        await fake.wait_for(lambda: _ignored(bot, "author is a bot") >= 1)
        assert _replies(fake, chat) == [] and backend.calls == warm + 1
        assert _ignored(bot, "author is a bot") == 1


async def test_reply_to_the_bot_is_answered(fake, world, isolated_env):
    guild, general, _, user = world
    backend = ScriptedBackend(["First.", "Second."])
    async with running_bot(fake, backend, isolated_env / "m.db") as bot:
        await fake.say(general, user, f"<@{bot.user.id}> hi", guild=guild, mentions=[fake.state.bot_user])
        [first] = await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages")
        bot_msg = next(m for m in fake.state.messages.values() if m["author"]["id"] == fake.state.bot_user["id"])
        await fake.say(general, user, "and then?", guild=guild, reply_to=bot_msg)
        posts = await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages", 2)
        assert posts[1].json["content"] == "Second."


async def test_long_reply_is_split_into_valid_messages_and_pings_nobody(fake, world, isolated_env):
    guild, general, _, user = world
    sentence = "The beam sweeps the rocks @everyone and <@&123> twice a minute. "
    long_reply = (sentence * 80).strip()
    assert len(long_reply) > 5000
    backend = ScriptedBackend([long_reply])
    async with running_bot(fake, backend, isolated_env / "m.db") as bot:
        await fake.say(general, user, f"<@{bot.user.id}> tell me everything", guild=guild, mentions=[fake.state.bot_user])
        # The reply is counted once its last part is sent: no part can come after this.
        await fake.wait_for(lambda: bot.metrics.replies.labels("message")._value.get() == 1)
        posts = _replies(fake, general)
        contents = [p.json["content"] for p in posts]
        assert len(posts) == 3 and all(0 < len(c) <= 2000 for c in contents)
        assert all(c.endswith("minute.") for c in contents)  # cut at sentence ends
        assert " ".join(contents) == long_reply
        for post in posts:
            allowed = post.json["allowed_mentions"]
            assert allowed["parse"] == [] and not allowed.get("roles") and not allowed.get("users")
            assert allowed.get("replied_user", False) is False  # Discord's default when absent: no ping
        assert "message_reference" in posts[0].json and "message_reference" not in posts[1].json


async def test_failing_backend_gives_a_user_message_and_the_next_message_works(fake, world, isolated_env, caplog):
    guild, general, _, user = world
    backend = ScriptedBackend(["Back on my feet."])
    async with running_bot(fake, backend, isolated_env / "m.db") as bot:
        backend.fail_next = 1
        mention = dict(guild=guild, mentions=[fake.state.bot_user])
        await fake.say(general, user, f"<@{bot.user.id}> hello?", **mention)
        [err] = await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages")
        from charbot.errors import BackendError

        assert err.json["content"] == BackendError.user_message
        assert "scripted failure" in caplog.text  # the details go to the log
        await fake.say(general, user, f"<@{bot.user.id}> hello again?", **mention)
        posts = await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages", 2)
        assert posts[1].json["content"] == "Back on my feet."
        assert bot.metrics.errors.labels("backend")._value.get() == 1


async def test_a_429_is_waited_out(fake, world, isolated_env):
    guild, general, _, user = world
    fake.state.rate_limit("POST", f"/channels/{general['id']}/messages", retry_after=0.6)
    async with running_bot(fake, ScriptedBackend(["Patience."]), isolated_env / "m.db") as bot:
        await fake.say(general, user, f"<@{bot.user.id}> now!", guild=guild, mentions=[fake.state.bot_user])
        [post] = await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages")
        limited = [c for c in fake.state.calls if c.status == 429]
        assert len(limited) == 1 and post.json["content"] == "Patience."
        assert post.at - limited[0].at >= 0.55


async def test_a_reply_discord_refused_is_not_remembered(fake, world, isolated_env):
    """The character never recalls a line nobody saw: memory is written once the reply was delivered."""
    guild, general, _, user = world
    backend = ScriptedBackend(["A line nobody will see.", "A line that arrives."])
    fake.state.refuse("POST", f"/channels/{general['id']}/messages")  # e.g. the bot lost Send Messages for a moment
    async with running_bot(fake, backend, isolated_env / "m.db") as bot:
        conversation = f"discord:{general['id']}"
        await fake.say(general, user, f"<@{bot.user.id}> first", guild=guild, mentions=[fake.state.bot_user])
        await fake.wait_for(lambda: bot.metrics.errors.labels("discord")._value.get() == 1)
        assert bot.engine.store.sync.count_messages(conversation) == 0
        await fake.say(general, user, f"<@{bot.user.id}> second", guild=guild, mentions=[fake.state.bot_user])
        [post] = await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages")
        assert post.json["content"] == "A line that arrives."
        await fake.wait_for(lambda: bot.engine.store.sync.count_messages(conversation) == 2)
        assert [t.content for t in bot.engine.store.sync.history(conversation)] == ["second", "A line that arrives."]
        assert all("nobody will see" not in m.content for m in backend.prompts[-1].messages)


async def test_server_closing_the_socket_leads_to_resume_without_losing_a_reply(fake, world, isolated_env):
    guild, general, _, user = world
    async with running_bot(fake, ScriptedBackend(["Still here."]), isolated_env / "m.db") as bot:
        identifies = fake.gateway.identifies
        await fake.gateway.drop(4000)
        # Sent while the bot is disconnected: Discord keeps it for the session and replays it on RESUME.
        await fake.say(general, user, f"<@{bot.user.id}> you there?", guild=guild, mentions=[fake.state.bot_user])
        [post] = await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages")
        assert post.json["content"] == "Still here."
        assert fake.gateway.resumes == 1 and fake.gateway.identifies == identifies


async def test_memory_survives_a_restart(fake, world, isolated_env):
    guild, general, _, user = world
    db = isolated_env / "m.db"
    mention = dict(guild=guild, mentions=[fake.state.bot_user])
    async with running_bot(fake, ScriptedBackend(["Noted: your boat is the Wren."]), db) as bot:
        await fake.say(general, user, f"<@{bot.user.id}> my boat is called the Wren", **mention)
        await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages")
    second = ScriptedBackend(["The Wren, aye."])
    async with running_bot(fake, second, db) as bot:
        await fake.say(general, user, f"<@{bot.user.id}> what's my boat called?", **mention)
        await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages", 2)
        shown = " ".join(m.content for m in second.prompts[-1].messages)
        assert "my boat is called the Wren" in shown and "Noted: your boat is the Wren." in shown


async def test_slash_reset_forgets_the_channel(fake, world, isolated_env):
    guild, general, _, user = world
    backend = ScriptedBackend(["Aye."])
    async with running_bot(fake, backend, isolated_env / "m.db") as bot:
        assert {c["name"] for c in fake.state.commands} == {"reset", "persona", "ask"}
        await fake.say(general, user, f"<@{bot.user.id}> remember the red buoy", guild=guild, mentions=[fake.state.bot_user])
        await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages")
        await fake.wait_for(lambda: bot.engine.store.sync.count_messages(f"discord:{general['id']}") == 2)  # remembered once sent
        interaction = await fake.slash("reset", channel=general, user=user, guild=guild, permissions=(1 << 13) | (1 << 31))  # Manage Messages
        await fake.wait_for(lambda: "response" in interaction)
        assert interaction["response"]["message"]["content"] == "Forgot 2 messages. Fresh start."
        assert bot.engine.store.sync.count_messages(f"discord:{general['id']}") == 0


async def test_slash_persona_lists_and_switches_only_for_manage_server(fake, world, isolated_env, sample_card, tmp_path, memory_url):
    guild, general, _, user = world
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "bram.json").write_text(sample_card.model_copy(update={"data": sample_card.data.model_copy(update={"name": "Bram Salt"})}).model_dump_json())
    backend = ScriptedBackend(["Ahoy."])
    async with running_bot(fake, backend, isolated_env / "m.db", persona_dir=cards, memory_url=memory_url) as bot:
        listing = await fake.slash("persona", channel=general, user=user, guild=guild)
        await fake.wait_for(lambda: "response" in listing)
        assert "Bram Salt" in listing["response"]["message"]["content"]
        assert listing["response"]["message"]["flags"] & 64  # ephemeral
        option = [{"name": "name", "type": 3, "value": "bram salt"}]
        denied = await fake.slash("persona", channel=general, user=user, guild=guild, options=option)
        await fake.wait_for(lambda: "response" in denied)
        assert "Manage Server" in denied["response"]["message"]["content"]
        assert (await bot.engine.persona_for(f"discord:{general['id']}")).name != "Bram Salt"
        switched = await fake.slash("persona", channel=general, user=user, guild=guild, options=option, permissions=(1 << 5) | (1 << 31))
        await fake.wait_for(lambda: "response" in switched)
        assert "Bram Salt" in switched["response"]["message"]["content"]
        assert (await bot.engine.persona_for(f"discord:{general['id']}")).name == "Bram Salt"


async def test_slash_persona_takes_an_uploaded_card_and_a_bad_one_changes_nothing(fake, world, isolated_env, tmp_path):
    from card_files import png_image, with_card_chunks, wren

    guild, general, _, user = world
    admin = (1 << 5) | (1 << 31)  # Manage Server
    backend = ScriptedBackend(["Tie up on the left."])
    async with running_bot(fake, backend, isolated_env / "m.db", persona_dir=tmp_path) as bot:
        conversation = f"discord:{general['id']}"
        for name, data, says in [
            ("photo.png", png_image(), "photo.png: a PNG without a character card"),
            ("cut.png", with_card_chunks(png_image(), ccv3=wren(3))[:-40], "cut.png: truncated PNG"),
            ("orla.json", b'{"spec": "chara_card_v2", "data": {"name": "Orla", "description": "an impostor"}}', "a different character called 'Orla'"),
        ]:
            option, resolved = fake.attach(name, data)
            refused = await fake.slash("persona", channel=general, user=user, guild=guild, options=[option], resolved=resolved, permissions=admin)
            await fake.wait_for(lambda: "response" in refused)
            message = refused["response"]["message"]
            assert says in message["content"] and "Still talking as **Orla**" in message["content"] and message["flags"] & 64
            assert (await bot.engine.persona_for(conversation)).name == "Orla" and "impostor" not in bot.engine.personas["Orla"].data.description
        option, resolved = fake.attach("wren.png", with_card_chunks(png_image(), chara=wren(2), ccv3=wren(3)))
        switched = await fake.slash("persona", channel=general, user=user, guild=guild, options=[option], resolved=resolved, permissions=admin)
        await fake.wait_for(lambda: "response" in switched)
        assert switched["response"]["message"]["content"] == "Now talking as **Wren** in this channel."
        await fake.say(general, user, f"<@{bot.user.id}> where do I tie up? I came on the Heron", guild=guild, mentions=[fake.state.bot_user])
        await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages")
        system = backend.prompts[-1].messages[0].content
        assert system.startswith("You are Wren.") and "The Heron is Wren's narrowboat" in system  # the uploaded card's lorebook


async def test_slash_ask_answers_once_and_remembers_nothing(fake, world, isolated_env):
    guild, general, _, user = world
    async with running_bot(fake, ScriptedBackend(["Three knots, no more."]), isolated_env / "m.db") as bot:
        interaction = await fake.slash("ask", channel=general, user=user, guild=guild, options=[{"name": "question", "type": 3, "value": "how fast?"}])
        await fake.wait_for(lambda: interaction.get("response", {}).get("message", {}).get("content") == "Three knots, no more.")
        assert interaction["response"]["type"] == 5  # deferred ("thinking…") first
        assert bot.engine.store.sync.count_messages() == 0


async def test_ping_author_setting_lets_only_the_author_be_pinged(fake, world, isolated_env):
    guild, general, _, user = world
    async with running_bot(fake, ScriptedBackend(["Hey <@999> and @everyone."]), isolated_env / "m.db", discord_ping_author=True) as bot:
        await fake.say(general, user, f"<@{bot.user.id}> hi", guild=guild, mentions=[fake.state.bot_user])
        [post] = await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages")
        assert post.json["allowed_mentions"] == {"parse": [], "replied_user": True}
