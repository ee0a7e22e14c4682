"""`charbot discord` as a user runs it: the real CLI in a subprocess, the real embedded model through
llama.cpp, pointed at the fake Discord by the two URL settings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from cli_process import DiscordCli, discord_env
from fakediscord import FakeDiscord, FakeState

TOKEN = "cli-test-token-0123456789"
# What the engine says when the model produced nothing usable: a reply equal to it was not generated.
FALLBACK = "FALLBACK-REPLY-SENTINEL-5d1e"


def test_missing_token_is_a_one_line_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARBOT_") and k != "DISCORD_TOKEN"}
    done = subprocess.run([sys.executable, "-m", "charbot", "discord"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("charbot: error:") and "DISCORD_TOKEN" in lines[0]
    assert "Traceback" not in done.stderr


def _cli(fake, tmp_path, *args) -> DiscordCli:
    env = discord_env(fake, tmp_path, TOKEN, CHARBOT_FALLBACK_REPLY=FALLBACK)
    return DiscordCli("--max-new-tokens", "12", "--seed", "7", *args, env=env, cwd=tmp_path)


@pytest.mark.slow
@pytest.mark.model
async def test_cli_bot_answers_a_mention_with_the_embedded_model(tmp_path):
    async with FakeDiscord(FakeState(token=TOKEN)) as fake:
        guild = fake.state.add_guild()
        general, user = fake.state.channel(guild, "general"), fake.state.user("marek")
        async with _cli(fake, tmp_path) as bot:
            health = await bot.wait_ready()  # 503 while the model loads and the gateway connects, then 200
            assert health["ready"] and health["backend_ready"] and health["gateway_connected"]
            assert fake.gateway.identifies == 1
            asked = await fake.say(general, user, f"<@{fake.state.bot_user['id']}> Hello! Who are you?", guild=guild, mentions=[fake.state.bot_user])
            [post] = await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages", timeout=60)
            typing = fake.state.calls_to("POST", f"/channels/{general['id']}/typing")
            assert typing and typing[0].at <= post.at
            reply = post.json["content"]
            assert reply != FALLBACK and len(reply) <= 2000 and len(reply.split()) >= 3, reply  # generated words
            assert post.json["allowed_mentions"]["parse"] == []
            assert str(post.json["message_reference"]["message_id"]) == asked["id"]
            # The fake creates a message only for a request made with the bot's token, authored by the bot.
            [posted] = [m for m in fake.state.messages.values() if m.get("referenced_message", {}).get("id") == asked["id"]]
            assert posted["author"]["id"] == fake.state.bot_user["id"] and posted["content"] == reply
        assert bot.returncode == 0, bot.stderr[-2000:]
        assert TOKEN not in bot.stdout + bot.stderr


@pytest.mark.slow
@pytest.mark.model
async def test_cli_refused_intent_is_one_line_with_the_fix(tmp_path):
    async with FakeDiscord(FakeState(token=TOKEN, message_content_enabled=False)) as fake:
        bot = _cli(fake, tmp_path, "--no-health")
        returncode = await bot.run(timeout=120)
    assert returncode != 0
    text = bot.stderr
    errors = [line for line in text.splitlines() if line.startswith("charbot: error:")]
    assert len(errors) == 1 and "Message Content Intent" in errors[0] and "discord.com/developers" in errors[0]
    assert "Traceback" not in text


def test_a_bad_card_in_the_cast_is_one_line_before_the_model_loads(tmp_path):
    from cast_support import card, write_cast

    cast = write_cast(tmp_path / "cast", {"morty": card("Morty")})
    (cast / "rick.json").write_text("{not json")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARBOT_")}
    env.update(DISCORD_TOKEN=TOKEN, CHARBOT_DB_PATH=str(tmp_path / "m.db"))
    done = subprocess.run([sys.executable, "-m", "charbot", "discord", "--cast", str(cast)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1, done.stderr
    assert lines[0].startswith("charbot: error:") and "rick.json" in lines[0] and "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.model
async def test_cli_cast_answers_as_two_characters_with_the_embedded_model(tmp_path):
    """Rick on the bot's model, Morty on a model of his own (discord_character_models: here a copy of the
    embedded GGUF, so a second instance is loaded)."""
    from cast_support import card, executes, guild_with_webhooks, strict, write_cast

    from charbot.models import embedded_model_path

    cast = write_cast(tmp_path / "cast", {"rick": card("Rick", 0.0, personality="a cynical genius scientist"),
                                          "morty": card("Morty", 0.0, personality="a nervous teenager")})
    mortys = tmp_path / "morty.gguf"
    shutil.copyfile(embedded_model_path(), mortys)
    async with FakeDiscord(FakeState(token=TOKEN)) as fake:
        guild, _, chat, user = guild_with_webhooks(fake.state)
        args = ("--cast", str(cast), "--scene-turns", "1")
        env_extra = {"CHARBOT_DISCORD_CHAT_CHANNELS": f"[{chat['id']}]", "CHARBOT_DISCORD_CHARACTER_MODELS": json.dumps({"Morty": str(mortys)})}
        env = discord_env(fake, tmp_path, TOKEN, CHARBOT_FALLBACK_REPLY=FALLBACK, **env_extra)
        async with DiscordCli("--max-new-tokens", "12", "--seed", "7", *args, env=env, cwd=tmp_path) as bot:
            health = await bot.wait_ready()
            assert sorted(health["cast"]["characters"]) == ["Morty", "Rick"]
            assert health["cast"]["characters"]["Morty"]["model"] == str(mortys) and "model" not in health["cast"]["characters"]["Rick"]
            assert health["backend_status"].count("ready") == 2 and health["backend_ready"]  # two models loaded
            await fake.say(chat, user, "Rick, who are you?", guild=guild)
            await fake.wait_for(lambda: len(executes(fake)) == 1, timeout=60)
            await fake.say(chat, user, "Morty, and who are you?", guild=guild)
            await fake.wait_for(lambda: len(executes(fake)) == 2, timeout=60)
            posts = executes(fake)
            assert [p.json["username"] for p in posts] == ["Rick", "Morty"]
            for post in posts:
                assert post.json["content"] != FALLBACK and len(post.json["content"].split()) >= 2, post.json
                assert strict(post.json["allowed_mentions"])
            health = await bot.wait_health(lambda s, b: b["cast"]["characters"]["Morty"]["replies"] == 1, "Morty counted")
            assert health["cast"]["characters"]["Rick"]["replies"] == 1
        assert bot.returncode == 0, bot.stderr[-2000:]
