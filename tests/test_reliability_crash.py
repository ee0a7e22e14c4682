"""The bot process killed with SIGKILL while it generates: the real CLI in a subprocess with the embedded
model, against the fake Discord. After a restart the memory database is intact, holds every reply that was
sent, and the bot answers again."""

from __future__ import annotations

import signal
import sqlite3

import pytest

from cli_process import DiscordCli, discord_env
from fakediscord import FakeDiscord, FakeState

TOKEN = "crash-test-token-0123456789"
pytestmark = [pytest.mark.slow, pytest.mark.model]


def _bot(fake, tmp_path, max_new_tokens: int) -> DiscordCli:
    env = discord_env(fake, tmp_path, TOKEN, CHARBOT_THREADS="1")
    return DiscordCli("--max-new-tokens", str(max_new_tokens), "--seed", "7", env=env, cwd=tmp_path)


def _stored(db_path) -> list[tuple[str, str]]:
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return db.execute("SELECT role, content FROM messages ORDER BY id").fetchall()


async def test_sigkill_mid_generation_loses_no_sent_reply_and_the_bot_answers_after_restart(tmp_path):
    async with FakeDiscord(FakeState(token=TOKEN)) as fake:
        guild = fake.state.add_guild()
        general, user = fake.state.channel(guild, "general"), fake.state.user("marek")
        at = f"<@{fake.state.bot_user['id']}>"
        mention = dict(guild=guild, mentions=[fake.state.bot_user])
        posts_path = f"/channels/{general['id']}/messages"

        async with _bot(fake, tmp_path, max_new_tokens=256) as bot:
            await bot.wait_ready()
            await fake.say(general, user, f"{at} Hello! My boat is called the Wren.", **mention)
            [first] = await fake.wait_for_calls("POST", posts_path, timeout=90)
            await fake.say(general, user, f"{at} Tell me a very long story about the sea, the storms and the lighthouse.", **mention)
            # Killed while the engine holds the second reply's generation slot: after it starts, before it is sent.
            await bot.wait_health(lambda status, health: health["inflight"] == 1, "generating the second reply", timeout=60)
            assert len(fake.state.calls_to("POST", posts_path)) == 1, "the reply came before the kill; make it longer"
            await bot.stop(signal.SIGKILL)
        assert bot.returncode == -signal.SIGKILL

        rows = _stored(tmp_path / "memory.db")  # integrity_check: the file is not corrupted
        sent = [c.json["content"] for c in fake.state.calls_to("POST", posts_path)]
        assert [content for role, content in rows if role == "assistant"] == sent  # every sent reply, nothing else
        assert rows[0] == ("user", "Hello! My boat is called the Wren.")

        async with _bot(fake, tmp_path, max_new_tokens=12) as bot:
            await bot.wait_ready()
            await fake.say(general, user, f"{at} What is my boat called?", **mention)
            posts = await fake.wait_for_calls("POST", posts_path, 2, timeout=90)
            assert 0 < len(posts[1].json["content"]) <= 2000
        assert bot.returncode == 0, bot.stderr[-2000:]
        rows = _stored(tmp_path / "memory.db")
        assert [c for r, c in rows if r == "user"] == ["Hello! My boat is called the Wren.", "What is my boat called?"]
        assert [c for r, c in rows if r == "assistant"] == [first.json["content"], posts[1].json["content"]]
