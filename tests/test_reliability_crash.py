"""The bot process killed with SIGKILL while it generates: the real CLI in a subprocess with the embedded
model, against the fake Discord. After a restart the memory database is intact, holds every reply that was
sent, and the bot answers again."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import sys

import aiohttp
import pytest

from fakediscord import FakeDiscord, FakeState

TOKEN = "crash-test-token-0123456789"
pytestmark = [pytest.mark.slow, pytest.mark.model]


def _env(fake: FakeDiscord, tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARBOT_")}
    env.update(
        DISCORD_TOKEN=TOKEN, CHARBOT_DISCORD_API_URL=fake.api_url, CHARBOT_DISCORD_GATEWAY_URL=fake.gateway_url,
        CHARBOT_DB_PATH=str(tmp_path / "memory.db"), CHARBOT_HEALTH_HOST="127.0.0.1", CHARBOT_DISCORD_COOLDOWN_SECONDS="0",
        XDG_DATA_HOME=str(tmp_path / "xdg"), CHARBOT_THREADS="1",
    )
    return env


async def _start(fake, tmp_path, max_new_tokens: int):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "charbot", "discord", "--health-port", "0", "--max-new-tokens", str(max_new_tokens), "--seed", "7",
        env=_env(fake, tmp_path), cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    port = None
    while port is None:
        line = (await asyncio.wait_for(proc.stderr.readline(), 90)).decode()
        assert line, "charbot discord exited early"
        if m := re.search(r"health page on http://[\d.]+:(\d+)/", line):
            port = int(m.group(1))
    drain = asyncio.create_task(proc.stderr.read())  # keep the pipe from filling
    async with aiohttp.ClientSession() as http:
        for _ in range(900):
            async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                if r.status == 200:
                    return proc, drain
            await asyncio.sleep(0.1)
    raise AssertionError("bot never became healthy")


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
        typing_path = f"/channels/{general['id']}/typing"

        proc, drain = await _start(fake, tmp_path, max_new_tokens=256)
        try:
            await fake.say(general, user, f"{at} Hello! My boat is called the Wren.", **mention)
            [first] = await fake.wait_for_calls("POST", posts_path, timeout=90)
            await fake.say(general, user, f"{at} Tell me a very long story about the sea, the storms and the lighthouse.", **mention)
            await fake.wait_for_calls("POST", typing_path, 2, timeout=30)  # the second reply is being generated
            await asyncio.sleep(0.3)
            assert len(fake.state.calls_to("POST", posts_path)) == 1, "the reply came before the kill; make it longer"
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            drain.cancel()
        assert proc.returncode == -signal.SIGKILL

        rows = _stored(tmp_path / "memory.db")  # integrity_check: the file is not corrupted
        sent = [c.json["content"] for c in fake.state.calls_to("POST", posts_path)]
        assert [content for role, content in rows if role == "assistant"] == sent  # every sent reply, nothing else
        assert rows[0] == ("user", "Hello! My boat is called the Wren.")

        proc, drain = await _start(fake, tmp_path, max_new_tokens=12)
        try:
            await fake.say(general, user, f"{at} What is my boat called?", **mention)
            posts = await fake.wait_for_calls("POST", posts_path, 2, timeout=90)
            assert 0 < len(posts[1].json["content"]) <= 2000
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)
            drain.cancel()
        assert proc.returncode == 0
        rows = _stored(tmp_path / "memory.db")
        assert [c for r, c in rows if r == "user"] == ["Hello! My boat is called the Wren.", "What is my boat called?"]
        assert [c for r, c in rows if r == "assistant"] == [first.json["content"], posts[1].json["content"]]
