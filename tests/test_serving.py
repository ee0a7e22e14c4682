"""Serving many conversations through the real bot and fake Discord: deadlines, retention, and the real
batched llama.cpp backend under concurrency."""

from __future__ import annotations

import asyncio
import time

import pytest

from charbot.memory import Turn
from charbot.retention import sweep
from charbot.scheduler import DeadlineExceeded
from conftest import ScriptedBackend
from fakediscord.harness import running_bot


@pytest.fixture
def world(fake):
    state = fake.state
    guild = state.add_guild(channels=("a", "b", "c", "d"))
    return guild, [state.channel(guild, n) for n in "abcd"], state.user("marek")


async def test_message_that_waits_past_its_deadline_is_dropped_and_the_user_told(fake, world, isolated_env):
    guild, (a, b, *_), user = world
    backend = ScriptedBackend(["Slow and steady."])
    async with running_bot(fake, backend, isolated_env / "m.db", discord_max_inflight=1, queue_timeout=0.2) as bot:
        backend.release = asyncio.Event()  # the first generation lasts until the second has given up
        mention = dict(guild=guild, mentions=[fake.state.bot_user])
        await fake.say(a, user, f"<@{bot.user.id}> first", **mention)
        await fake.wait_for(lambda: bot.gate.inflight == 1)
        await fake.say(b, fake.state.user("ines"), f"<@{bot.user.id}> second", **mention)
        [told] = await fake.wait_for_calls("POST", f"/channels/{b['id']}/messages")
        assert told.json["content"] == DeadlineExceeded.user_message
        backend.release.set()
        [done] = await fake.wait_for_calls("POST", f"/channels/{a['id']}/messages")
        assert done.json["content"] == "Slow and steady."
        assert bot.metrics.busy.labels("deadline")._value.get() == 1
        assert backend.calls == 2  # the warm-up and the first message; the dropped one never reached the model
        assert bot.engine.store.sync.count_messages(f"discord:{b['id']}") == 0


async def test_channels_are_answered_concurrently_up_to_capacity(fake, world, isolated_env):
    guild, channels, user = world
    backend = ScriptedBackend(["Aye."], parallel=8)
    async with running_bot(fake, backend, isolated_env / "m.db", discord_max_inflight=4) as bot:
        assert bot.status()["capacity"] == 4  # min(discord_max_inflight, what the backend serves at once)
        backend.release = asyncio.Event()
        mention = dict(guild=guild, mentions=[fake.state.bot_user])
        for ch in channels:
            await fake.say(ch, user, f"<@{bot.user.id}> hello", **mention)
        # All four in the model at once: one after another, the second would not start before the release.
        await fake.wait_for(lambda: backend.running == 4 and bot.gate.inflight == 4)
        assert [fake.state.calls_to("POST", f"/channels/{ch['id']}/messages") for ch in channels] == [[]] * 4
        backend.release.set()
        for ch in channels:
            [post] = await fake.wait_for_calls("POST", f"/channels/{ch['id']}/messages")
            assert post.json["content"] == "Aye."
        assert backend.peak == 4  # all four channels were generating at once, never more


async def test_retention_sweep_by_age_and_by_count(any_store, monkeypatch):
    store = any_store
    for i in range(5):
        await store.add_exchange("busy", [Turn("user", f"q{i}"), Turn("assistant", f"a{i}")])
    await store.add_exchange("quiet", [Turn("user", "old"), Turn("assistant", "older")])
    # two days on, "busy" talks again: "quiet" is old
    later = time.time() + 172800
    monkeypatch.setattr(time, "time", lambda: later)
    await store.add_exchange("busy", [Turn("user", "q5"), Turn("assistant", "a5")])
    swept = await sweep(store, retention_days=1, max_messages=4)
    assert (swept.old_messages, swept.over_cap, swept.idle_conversations) == (12, 0, 1)
    assert [t.content for t in await store.history("busy")] == ["q5", "a5"]
    assert await store.count_messages("quiet") == 0 and await store.count_conversations() == 1
    for i in range(3):
        await store.add_exchange("busy", [Turn("user", f"r{i}"), Turn("assistant", f"b{i}")])
    assert (await sweep(store, retention_days=None, max_messages=4)).over_cap == 4
    assert [t.content for t in await store.history("busy")] == ["r1", "b1", "r2", "b2"]
    assert (await sweep(store, retention_days=None, max_messages=None)).total == 0


async def test_bot_runs_the_retention_sweep_periodically(fake, world, isolated_env):
    guild, (a, *_), user = world
    backend = ScriptedBackend(["Aye."])
    async with running_bot(fake, backend, isolated_env / "m.db", max_messages_per_conversation=2, prune_interval=0.05) as bot:
        mention = dict(guild=guild, mentions=[fake.state.bot_user])
        for i in range(3):
            await fake.say(a, user, f"<@{bot.user.id}> number {i}", **mention)
            await fake.wait_for_calls("POST", f"/channels/{a['id']}/messages", i + 1)
        await fake.wait_for(lambda: bot.engine.store.sync.count_messages(f"discord:{a['id']}") == 2)
        assert bot.retention.sweeps >= 2 and bot.retention.deleted >= 4
        assert [t.content for t in bot.engine.store.sync.history(f"discord:{a['id']}")] == ["number 2", "Aye."]
    assert bot.retention._task is None  # stopped with the bot


@pytest.mark.model
@pytest.mark.slow
async def test_real_batched_model_serves_channels_together_in_order(fake, world, isolated_env):
    """The embedded model with parallel=4: two channels in flight at once, each channel's turns in order."""
    from charbot.backends.llamacpp import LlamaCppBackend
    from charbot.models import embedded_model_path

    guild, (a, b, *_), user = world
    channels = [a, b]
    backend = LlamaCppBackend(embedded_model_path(), context_window=1024, parallel=4, threads=1)

    async with running_bot(fake, backend, isolated_env / "m.db", max_new_tokens=8, parallel=4) as bot:
        assert bot.gate.capacity == 4
        mention = dict(guild=guild, mentions=[fake.state.bot_user])
        for turn in range(2):
            for ch in channels:
                await fake.say(ch, user, f"<@{bot.user.id}> question {turn} for {ch['name']}", **mention)
        for ch in channels:
            await fake.wait_for_calls("POST", f"/channels/{ch['id']}/messages", 2, timeout=180)
        assert backend.worker.most_sequences > 1  # the two channels were decoded in one batch
        for ch in channels:
            def users(cid=f"discord:{ch['id']}") -> list[str]:
                return [t.content for t in bot.engine.store.sync.history(cid) if t.role == "user"]

            await fake.wait_for(lambda: len(users()) == 2)  # remembered once sent
            assert users() == [f"question {n} for {ch['name']}" for n in range(2)]
