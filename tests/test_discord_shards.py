"""Two real `charbot discord` processes, one shard each (as on two hosts), sharing one PostgreSQL memory,
against the fake Discord serving two shards: each answers only its own guilds, direct messages reach shard 0
only, and a process killed with SIGKILL mid-reply is restarted and carries on the conversation with its whole
history. The model is a scripted OpenAI-compatible server, so the test sees every prompt each process sent."""

from __future__ import annotations

import asyncio
import re
import signal

import aiohttp
import pytest

from cli_process import DiscordCli, discord_env
from fakediscord import FakeDiscord, FakeState
from scripted_openai import ScriptedOpenAI

TOKEN = "shard-test-token-0123456789"
PASSWORD = "s3cret-Pa55"
pytestmark = pytest.mark.slow


def shard_process(fake, model, tmp_path, pg_url, shard_id: int) -> DiscordCli:
    home = tmp_path / f"host-{shard_id}"  # a data directory of its own, as on another machine
    home.mkdir(exist_ok=True)
    env = discord_env(fake, home, TOKEN, CHARBOT_MEMORY_URL=pg_url, OPENAI_API_KEY="sk-scripted", CHARBOT_LOG_LEVEL="INFO")
    return DiscordCli("--backend", "remote", "--base-url", model.base_url, "--shard-ids", str(shard_id), "--shard-count", "2",
                      env=env, cwd=home)


async def message_replies(bot: DiscordCli) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{bot.port}/metrics") as response:
        found = re.search(r'charbot_discord_replies_total\{kind="message"\} (\S+)', await response.text())
    return float(found.group(1)) if found else 0.0


async def test_two_shard_processes_share_one_memory(tmp_path, pg_url):
    async with FakeDiscord(FakeState(token=TOKEN, shards=2)) as fake, ScriptedOpenAI() as model:
        guilds: dict[int, dict] = {}
        while len(guilds) < 2:  # Discord's rule: a guild is on shard (id >> 22) % shard_count
            guild = fake.state.add_guild()
            guilds.setdefault((int(guild["id"]) >> 22) % 2, guild)
        user = fake.state.user("marek")
        at = f"<@{fake.state.bot_user['id']}>"
        channel = {shard: fake.state.channel(g, "general") for shard, g in guilds.items()}

        def posts(ch: dict) -> list[str]:
            return [c.json["content"] for c in fake.state.calls_to("POST", f"/channels/{ch['id']}/messages")]

        async def say(shard: int, text: str) -> None:
            await fake.say(channel[shard], user, f"{at} {text}", guild=guilds[shard], mentions=[fake.state.bot_user])

        first, second = shard_process(fake, model, tmp_path, pg_url, 0), shard_process(fake, model, tmp_path, pg_url, 1)
        async with first, second:
            health = await asyncio.gather(first.wait_ready(), second.wait_ready())
            assert [(h["shards"], h["shard_count"], h["direct_messages"]) for h in health] == [([0], 2, True), ([1], 2, False)]
            assert all(h["guilds"] == 1 and h["memory_store"] == pg_url.replace(PASSWORD, "***") for h in health)

            await say(0, "Hello from the first harbour.")
            await say(1, "My boat is called the Wren.")
            async def counted(*expected: float) -> bool:  # replies are counted once sent and remembered
                return [await message_replies(first), await message_replies(second)] == list(expected)

            await fake.wait_for(lambda: posts(channel[0]) == ["Aye."] and posts(channel[1]) == ["Aye."], timeout=30)
            await fake.wait_for(lambda: counted(1, 1))  # each process answered its own guild

            dm = fake.state.dm_channel(user)
            await fake.say(dm, user, "A word in private.")
            await fake.wait_for(lambda: posts(dm) == ["Aye."], timeout=30)
            await fake.wait_for(lambda: counted(2, 1))  # shard 0's process answered it

            model.hold = asyncio.Event()
            await say(1, "Where did I moor her?")
            await fake.wait_for(lambda: model.prompts_with("Where did I moor her?"), timeout=30)  # generating now
            await second.stop(signal.SIGKILL)
            model.hold.set()
            model.hold = None
            assert second.returncode == -signal.SIGKILL and posts(channel[1]) == ["Aye."]  # never answered

            restarted = shard_process(fake, model, tmp_path, pg_url, 1)
            async with restarted:
                await restarted.wait_ready()
                await say(1, "What is my boat called?")
                await fake.wait_for(lambda: posts(channel[1]) == ["Aye.", "Aye."], timeout=30)
            assert restarted.returncode == 0, restarted.stderr[-2000:]
        assert first.returncode == 0, first.stderr[-2000:]

        [prompt] = model.prompts_with("What is my boat called?")
        # the restarted process read the conversation from the shared memory: the first exchange, then the new
        # message; the turn it was killed in was never answered, so never remembered
        assert prompt[-3:] == ["Marek: My boat is called the Wren.", "Orla: Aye.", "Marek: What is my boat called?"]
        assert not any("moor" in line for line in prompt)
        logs = first.stderr + second.stderr + restarted.stderr
        assert PASSWORD not in logs and TOKEN not in logs
