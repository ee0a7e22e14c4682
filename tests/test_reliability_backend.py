"""The inference server killed and restarted under a running bot: the real llama.cpp server
(`llama_cpp.server`, see tests/llama_server.py) behind the remote backend, the real discord.py client
against the fake Discord. Users get a short error while it is down; replies resume by themselves."""

from __future__ import annotations

import asyncio
import signal

import pytest

from charbot.errors import BackendUnavailable
from fakediscord import FakeDiscord
from fakediscord.harness import running_bot
from llama_server import LlamaServer, _wait_until_up, missing_server_deps, spawn
from loopback import free_port

pytestmark = [pytest.mark.slow, pytest.mark.model]


def kill(server: LlamaServer) -> None:
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()


async def test_server_killed_and_restarted_gives_short_errors_then_replies_resume(isolated_env, monkeypatch):
    missing = missing_server_deps()
    if missing:
        pytest.skip(f"llama_cpp.server needs {', '.join(missing)}")
    port = free_port()
    server = spawn(port)
    logs = [server.log_path]
    try:
        await asyncio.to_thread(_wait_until_up, server, 120)
        monkeypatch.setenv("CHARBOT_BACKEND", "remote")
        async with FakeDiscord() as fake:
            guild = fake.state.add_guild()
            general, user = fake.state.channel(guild, "general"), fake.state.user("marek")
            mention = dict(guild=guild, mentions=[fake.state.bot_user])
            path = f"/channels/{general['id']}/messages"
            async with running_bot(fake, None, isolated_env / "m.db", base_url=server.base_url, remote_timeout=20,
                                   remote_max_retries=2, max_new_tokens=8, seed=7) as bot:
                await fake.say(general, user, f"<@{bot.user.id}> Hello! Who are you?", **mention)
                [first] = await fake.wait_for_calls("POST", path, timeout=60)
                assert first.json["content"] not in (BackendUnavailable.user_message, "")

                kill(server)
                for n in range(2):
                    await fake.say(general, user, f"<@{bot.user.id}> are you there? ({n})", **mention)
                    posts = await fake.wait_for_calls("POST", path, 2 + n, timeout=30)
                    assert posts[-1].json["content"] == BackendUnavailable.user_message
                    # A short error, not a long hang: refused connections, retried, then given up on; a hang
                    # would have ended at the 20 s timeout ("no reply ... within 20s") instead.
                    status = bot.engine.backend.status
                    assert "cannot reach" in status and "within" not in status, status
                assert bot.metrics.errors.labels("backend")._value.get() == 2

                server = spawn(port)  # same address: nothing in the bot is told about it
                logs.append(server.log_path)
                await asyncio.to_thread(_wait_until_up, server, 120)
                await fake.say(general, user, f"<@{bot.user.id}> Welcome back. What is your name?", **mention)
                posts = await fake.wait_for_calls("POST", path, 4, timeout=60)
                assert posts[-1].json["content"] != BackendUnavailable.user_message and posts[-1].json["content"].strip()
                # The failed turns were not remembered; the answered ones were (once sent: wait for the write).
                remembered = ["Hello! Who are you?", "Welcome back. What is your name?"]
                await fake.wait_for(lambda: [t.content for t in bot.engine.store.sync.history(f"discord:{general['id']}")
                                             if t.role == "user"] == remembered)
    finally:
        if server.process.poll() is None:
            server.process.terminate()
            server.process.wait(10)
        for log in logs:
            log.unlink(missing_ok=True)
