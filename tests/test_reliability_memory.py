"""The memory database stops accepting writes (read-only, disk full): the bot keeps answering, the log and
the health page say what is wrong, and writes resume by themselves once the database is writable again.

The failures are SQLite's own: `PRAGMA query_only` refuses writes exactly as a read-only file does
("attempt to write a readonly database"), `PRAGMA max_page_count` makes the file full ("database or disk is
full"). (The tests run as root, for whom a chmod'ed file is still writable.)"""

from __future__ import annotations

import json
import logging
import sqlite3

import aiohttp
import pytest

from charbot.engine import Engine
from charbot.memory import MemoryStoreError, Turn
from conftest import ScriptedBackend
from fakediscord import FakeDiscord
from fakediscord.harness import running_bot


def make_read_only(store) -> None:
    store.sync._db.execute("PRAGMA query_only = ON")


def make_full(store) -> None:
    """No page may be added and the pages there are are packed (with rows of a filler conversation), so the
    next exchange hits SQLITE_FULL."""
    db = store.sync._db
    db.execute("INSERT OR IGNORE INTO conversations (id, created_at, updated_at) VALUES ('_filler', 0, 0)")
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    n = 0
    for size in (2000, 200, 20, 1):
        try:
            while True:
                n += 1
                db.execute("INSERT INTO conversations (id, created_at, updated_at) VALUES (?, 0, 0)", (f"_filler{n:09d}" + "f" * size,))
        except sqlite3.OperationalError:
            pass
        try:
            while True:
                db.execute("INSERT INTO messages (conversation_id, role, content, created_at) VALUES ('_filler', 'user', ?, 0)", ("f" * size,))
        except sqlite3.OperationalError:
            pass


def make_writable(store) -> None:
    store.sync._db.execute("PRAGMA query_only = OFF")
    store.sync._db.execute("PRAGMA max_page_count = 1073741823")


@pytest.mark.parametrize(("break_it", "says"), [(make_read_only, "readonly"), (make_full, "full")])
async def test_store_write_failure_is_one_clear_error_and_leaves_nothing_half_written(store, break_it, says):
    await store.add_exchange("c", [Turn("user", "before"), Turn("assistant", "ok")])
    break_it(store)
    with pytest.raises(MemoryStoreError) as caught:
        await store.add_exchange("c", [Turn("user", "x" * 20_000), Turn("assistant", "lost")])
    message = str(caught.value)
    assert says in message and str(store.path) in message and "\n" not in message
    assert [t.content for t in await store.history("c")] == ["before", "ok"]  # neither turn of the failed exchange
    make_writable(store)
    await store.add_exchange("c", [Turn("user", "after"), Turn("assistant", "ok")])
    assert await store.count_messages("c") == 4
    assert store.sync._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_engine_replies_when_memory_cannot_be_written(store, sample_card, caplog):
    engine = Engine(ScriptedBackend(["Aye."]), store, sample_card)
    make_full(store)
    reply = await engine.reply("c", "hello")
    assert reply.text == "Aye."
    assert engine.memory_status.startswith("error: memory database") and "full" in engine.memory_status
    assert "reply not remembered" in caplog.text
    make_writable(store)
    await engine.reply("c", "again")
    assert engine.memory_status == "ok" and await store.count_messages("c") == 2


async def _healthz(port: int) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
            return response.status, json.loads(await response.text())


@pytest.mark.parametrize("break_it", [make_read_only, make_full])
async def test_bot_keeps_answering_and_reports_the_memory_error(isolated_env, caplog, break_it):
    caplog.set_level(logging.INFO)
    async with FakeDiscord() as fake:
        guild = fake.state.add_guild()
        general, user = fake.state.channel(guild, "general"), fake.state.user("marek")
        mention = dict(guild=guild, mentions=[fake.state.bot_user])
        async with running_bot(fake, ScriptedBackend(["Aye."]), isolated_env / "m.db", health=True) as bot:
            store = bot.engine.store
            await fake.wait_for(lambda: bot.health_port)
            status, health = await _healthz(bot.health_port)
            assert status == 200 and health["memory"] == "ok"
            break_it(store)
            for n in range(1, 4):
                await fake.say(general, user, f"<@{bot.user.id}> message {n}", **mention)
                posts = await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages", n)
                assert posts[-1].json["content"] == "Aye."  # answered, not "Sorry…"
            status, health = await _healthz(bot.health_port)
            assert status == 200 and health["memory"].startswith("error: memory database") and str(store.path) in health["memory"]
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "not remembered" in r.getMessage()]
            assert len(errors) == 3 and all("\n" not in r.getMessage() for r in errors)
            assert store.sync.count_messages(f"discord:{general['id']}") == 0
            make_writable(store)
            await fake.say(general, user, f"<@{bot.user.id}> message 4", **mention)
            await fake.wait_for_calls("POST", f"/channels/{general['id']}/messages", 4)
            await fake.wait_for(lambda: store.sync.count_messages(f"discord:{general['id']}") == 2)
            assert (await _healthz(bot.health_port))[1]["memory"] == "ok"


async def test_reset_and_persona_switch_report_a_read_only_memory(isolated_env, caplog):
    from charbot.discord.cogs.admin import MEMORY_DOWN

    async with FakeDiscord() as fake:
        guild = fake.state.add_guild()
        general, user = fake.state.channel(guild, "general"), fake.state.user("marek")
        async with running_bot(fake, ScriptedBackend(["Aye."]), isolated_env / "m.db") as bot:
            make_read_only(bot.engine.store)
            admin = (1 << 5) | (1 << 13) | (1 << 31)
            reset = await fake.slash("reset", channel=general, user=user, guild=guild, permissions=admin)
            switch = await fake.slash("persona", channel=general, user=user, guild=guild, permissions=admin,
                                      options=[{"name": "name", "type": 3, "value": bot.engine.default_persona.name}])
            await fake.wait_for(lambda: "response" in reset and "response" in switch)
            assert reset["response"]["message"]["content"] == MEMORY_DOWN == switch["response"]["message"]["content"]
            assert bot.engine.memory_status.startswith("error: memory database") and "readonly" in bot.engine.memory_status
            assert "Traceback" not in caplog.text and "cannot save" in caplog.text
