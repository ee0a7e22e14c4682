"""Connection faults and floods, with the real discord.py client against the loopback fake Discord:
the gateway dropped again and again mid-conversation, a hundred messages in a second, Discord's 429s."""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc

import pytest

from charbot.errors import BusyError
from conftest import ScriptedBackend
from fakediscord.harness import running_bot


def echo(prompt) -> str:
    """Each reply names the message it answers, so a lost or doubled reply shows."""
    return "Re: " + prompt.messages[-1].content.split(": ", 1)[-1]


def busy_notices() -> set[str]:
    seen, todo = set(), [BusyError]
    while todo:
        cls = todo.pop()
        seen.add(cls.user_message)
        todo.extend(cls.__subclasses__())
    return seen


def responses_by_message(fake) -> dict[str, list[str]]:
    """The bot's messages grouped by the user message they reply to."""
    out: dict[str, list[str]] = {}
    for call in fake.state.calls_to("POST", "/messages"):
        ref = (call.json or {}).get("message_reference")
        if ref:
            out.setdefault(str(ref["message_id"]), []).append(call.json["content"])
    return out


def messages_seen(bot) -> float:
    return bot.metrics.messages_seen._value.get()


async def each_seen_once(fake, bot) -> None:
    """Waits until every message the fake holds has reached the bot and nothing is being generated; fails if
    any reached it twice. Every one of them (the bot's own included) is dispatched to the bot exactly once."""
    await fake.wait_for(lambda: bot.gate.depth == 0 and messages_seen(bot) >= len(fake.state.messages), timeout=30)
    assert messages_seen(bot) == len(fake.state.messages)


async def last_word(fake, bot, guild, channels, user) -> list[dict]:
    """A last message per channel, sent once no replay is under way, and answered: the gateway delivers in
    order, so by then every earlier event, replays included, has reached the bot. Returns them."""
    await fake.wait_for(lambda: bot.gateway_connected() and fake.gateway.resumes_done == fake.gateway.resumes)
    last = [await fake.say(c, user, f"<@{bot.user.id}> last one", guild=guild, mentions=[fake.state.bot_user]) for c in channels]
    await fake.wait_for(lambda: all(m["id"] in responses_by_message(fake) for m in last), timeout=30)
    return last


async def test_ten_gateway_drops_in_a_busy_conversation_lose_and_duplicate_nothing(fake, isolated_env):
    guild = fake.state.add_guild()
    channels = [fake.state.channel(guild, "general"), fake.state.channel(guild, "chat")]
    users = [fake.state.user(n) for n in ("marek", "ines", "tove", "bram")]
    backend = ScriptedBackend(respond=echo, delay=0.03)
    async with running_bot(fake, backend, isolated_env / "m.db", discord_max_queue=1000) as bot:
        identifies = fake.gateway.identifies
        sent = []
        drops = 0
        for i in range(50):
            channel, user = channels[i % 2], users[i % 4]
            sent.append(await fake.say(channel, user, f"<@{bot.user.id}> message {i}", guild=guild, mentions=[fake.state.bot_user]))
            if i % 5 == 2:
                # Alternate an edge restart (close 4000), an internal error (1011) and a reconnect request (op 7);
                # the next messages are dispatched while the socket is down and must be replayed on RESUME.
                kind = drops % 3
                if kind == 2:
                    await fake.gateway.request_reconnect()
                else:
                    await fake.gateway.drop(4000 if kind == 0 else 1011)
                drops += 1
            await asyncio.sleep(0.02)
        assert drops == 10
        await fake.wait_for(lambda: len(responses_by_message(fake)) == len(sent), timeout=30)
        last = await last_word(fake, bot, guild, channels, users[0])
        await each_seen_once(fake, bot)
        replies = responses_by_message(fake)
        for i, msg in enumerate(sent):
            assert replies[msg["id"]] == [f"Re: message {i}"], (i, replies[msg["id"]])
        assert [replies[m["id"]] for m in last] == [["Re: last one"]] * 2
        assert fake.gateway.resumes >= 10 and fake.gateway.identifies == identifies  # every drop was resumed
        # Memory holds every exchange exactly once, in order, per channel.
        for c, channel in enumerate(channels):
            def users(cid=f"discord:{channel['id']}") -> list[str]:
                return [t.content for t in bot.engine.store.sync.history(cid, 1000) if t.role == "user"]

            expected = [f"message {i}" for i in range(c, 50, 2)] + ["last one"]
            await fake.wait_for(lambda: len(users()) >= len(expected))  # the last reply's write may still be on its way
            assert users() == expected


class WindowedRateLimit:
    """Discord's behaviour for an exhausted bucket: from the first 429, every request on the route gets 429
    until `retry_after` has passed. A client that does not wait collects a 429 for every try."""

    def __init__(self, state, path: str, retry_after: float):
        self.path, self.retry_after = path, retry_after
        self.window_start: float | None = None
        self.first_429_at: float | None = None
        self.limited = 0
        self._original = state.take_rate_limit

    def __call__(self, method: str, path: str) -> float | None:
        now = time.monotonic()
        if method == "POST" and path == self.path:
            if self.window_start is None:
                self.window_start = now
            if now - self.window_start < self.retry_after:
                self.limited += 1
                self.first_429_at = self.first_429_at or now
                return round(self.retry_after - (now - self.window_start), 3)
        return self._original(method, path)


async def test_a_hundred_messages_in_a_second_each_get_one_answer_or_busy_and_429s_are_honoured(fake, isolated_env, monkeypatch):
    guild = fake.state.add_guild()
    general, chat = fake.state.channel(guild, "general"), fake.state.channel(guild, "chat")
    users = [fake.state.user(f"user{i}") for i in range(50)]
    limiter = WindowedRateLimit(fake.state, f"/channels/{general['id']}/messages", retry_after=1.0)
    backend = ScriptedBackend(respond=echo, delay=0.05)
    async with running_bot(fake, backend, isolated_env / "m.db", discord_max_queue=10) as bot:
        monkeypatch.setattr(fake.state, "take_rate_limit", limiter)
        sent = []
        for i in range(100):
            channel = general if i % 2 == 0 else chat
            sent.append(await fake.say(channel, users[i % 50], f"<@{bot.user.id}> flood {i}", guild=guild, mentions=[fake.state.bot_user]))
            await asyncio.sleep(0.008)
        await fake.wait_for(lambda: len(responses_by_message(fake)) == 100, timeout=60)
        await each_seen_once(fake, bot)
        replies = responses_by_message(fake)
        notices = busy_notices()
        answered = busy = 0
        for i, msg in enumerate(sent):
            [content] = replies[msg["id"]]  # exactly one response per message
            if content == f"Re: flood {i}":
                answered += 1
            else:
                assert content in notices, content
                busy += 1
        assert answered >= 10 and busy >= 1 and answered + busy == 100  # busy: the flood did outrun the queue
        assert bot.gate.depth == 0
        # 429s honoured: only requests already on the wire when the first 429 came back were refused; then
        # discord.py waited out `retry_after` for that route instead of hammering it.
        assert limiter.first_429_at is not None and 1 <= limiter.limited <= 10, limiter.limited
        route = [c for c in fake.state.calls if c.method == "POST" and c.path == limiter.path]
        retried = [c for c in route if c.status < 300]
        assert retried and min(c.at for c in retried) >= limiter.window_start + limiter.retry_after - 0.02
        other = fake.state.calls_to("POST", f"/channels/{chat['id']}/messages")
        assert len(other) == 50  # the other channel's bucket was not held up by this one's


@pytest.mark.slow
async def test_memory_stays_bounded_over_repeated_floods(fake, isolated_env):
    guild = fake.state.add_guild()
    channels = [fake.state.channel(guild, n) for n in ("general", "chat")]
    users = [fake.state.user(f"user{i}") for i in range(100)]
    backend = ScriptedBackend(respond=echo, delay=0.01)

    async def flood(bot, round_no: int) -> None:
        for i in range(100):
            await fake.say(channels[i % 2], users[(i + round_no) % 100], f"<@{bot.user.id}> r{round_no} m{i}", guild=guild, mentions=[fake.state.bot_user])
            await asyncio.sleep(0.005)
        await fake.wait_for(lambda: len(responses_by_message(fake)) == 100, timeout=60)
        # a reply's conversation is held until it has been delivered and remembered, a moment after the POST
        await fake.wait_for(lambda: bot.gate.depth == 0 and not bot.gate._running_keys)
        # The fake's own records are the test's, not the bot's: clear them so only the bot's memory is measured.
        fake.state.calls.clear()
        fake.state.messages.clear()
        backend.prompts.clear()  # the mock's record of every prompt
        backend.settings.clear()
        for session in fake.gateway.sessions.values():
            session.log.clear()

    async with running_bot(fake, backend, isolated_env / "m.db", discord_max_queue=20) as bot:
        # Traced from the start: discord.py keeps the last 1000 messages (max_messages), so the cache turns
        # over every few floods, and an untraced old entry freed for a traced new one would look like growth.
        tracemalloc.start()
        try:
            for r in range(6):
                await flood(bot, r)
            gc.collect()
            base = tracemalloc.get_traced_memory()[0]
            for r in range(6, 10):
                await flood(bot, r)
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()
        assert len(bot.cached_messages) <= 1000
        assert bot.engine.scheduler.depth == 0 and not bot.engine.scheduler._running_keys  # nothing held per channel
        # 400 more messages and replies: a leak of even 1 KB each would show as 0.8 MB.
        assert grown < 400_000, f"grew {grown} bytes over 4 floods of 100 messages"
