"""`charbot discord` as a user runs it: the real CLI in a subprocess, the real embedded model through
llama.cpp, pointed at the fake Discord by the two URL settings."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys

import aiohttp
import pytest

from fakediscord import FakeDiscord, FakeState

TOKEN = "cli-test-token-0123456789"


def _env(fake: FakeDiscord, tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARBOT_")}
    env.update(
        DISCORD_TOKEN=TOKEN, CHARBOT_DISCORD_API_URL=fake.api_url, CHARBOT_DISCORD_GATEWAY_URL=fake.gateway_url,
        CHARBOT_DB_PATH=str(tmp_path / "memory.db"), CHARBOT_HEALTH_HOST="127.0.0.1", CHARBOT_DISCORD_COOLDOWN_SECONDS="0",
        XDG_DATA_HOME=str(tmp_path / "xdg"),
    )
    return env


def test_missing_token_is_a_one_line_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARBOT_") and k != "DISCORD_TOKEN"}
    done = subprocess.run([sys.executable, "-m", "charbot", "discord"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("charbot: error:") and "DISCORD_TOKEN" in lines[0]
    assert "Traceback" not in done.stderr


async def _run_cli(fake, tmp_path, *args):
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "charbot", "discord", "--health-port", "0", "--max-new-tokens", "12", "--seed", "7", *args,
        env=_env(fake, tmp_path), cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


@pytest.mark.slow
@pytest.mark.model
async def test_cli_bot_answers_a_mention_with_the_embedded_model(tmp_path):
    async with FakeDiscord(FakeState(token=TOKEN)) as fake:
        guild = fake.state.add_guild()
        general, user = fake.state.channel(guild, "general"), fake.state.user("marek")
        proc = await _run_cli(fake, tmp_path)
        try:
            port = None
            while port is None:  # the health page announces its port on stderr
                line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
                assert line, "charbot discord exited early"
                if m := re.search(r"health page on http://[\d.]+:(\d+)/", line):
                    port = int(m.group(1))
            statuses = []
            async with aiohttp.ClientSession() as http:
                for _ in range(600):  # 503 while the model loads and the gateway connects, then 200
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                        statuses.append(r.status)
                        health = await r.json()
                    if r.status == 200:
                        break
                    await asyncio.sleep(0.1)
            assert health["ready"] and health["backend_ready"] and health["gateway_connected"]
            assert fake.gateway.identifies == 1
            await fake.say(general, user, f"<@{fake.state.bot_user['id']}> Hello! Who are you?", guild=guild, mentions=[fake.state.bot_user])
            [post] = await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages", timeout=60)
            typing = fake.state.calls_to("POST", f"/channels/{general['id']}/typing")
            assert typing and typing[0].at <= post.at
            assert 0 < len(post.json["content"]) <= 2000 and post.json["allowed_mentions"]["parse"] == []
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()[-2000:]
        assert TOKEN not in (out + err).decode()


@pytest.mark.slow
@pytest.mark.model
async def test_cli_refused_intent_is_one_line_with_the_fix(tmp_path):
    async with FakeDiscord(FakeState(token=TOKEN, message_content_enabled=False)) as fake:
        proc = await _run_cli(fake, tmp_path, "--no-health")
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode != 0
    text = err.decode()
    errors = [line for line in text.splitlines() if line.startswith("charbot: error:")]
    assert len(errors) == 1 and "Message Content Intent" in errors[0] and "discord.com/developers" in errors[0]
    assert "Traceback" not in text
