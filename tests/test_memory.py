"""The store protocol, run against each implementation (`any_store`: SQLite in a file, and PostgreSQL on the
real server the session starts), plus what is particular to each."""

import asyncio
import sqlite3
import time

import psycopg
import pytest

from charbot import memory_postgres, memory_sqlite
from charbot.memory import Turn, create_store
from charbot.memory_sqlite import SqliteStore


def migration_names(store) -> list[str]:
    return [name for name, _ in (memory_sqlite.MIGRATIONS if isinstance(store, SqliteStore) else memory_postgres.MIGRATIONS)]


def test_both_stores_have_the_same_named_migrations():
    assert [n for n, _ in memory_sqlite.MIGRATIONS] == [n for n, _ in memory_postgres.MIGRATIONS]


async def test_migrations_are_named_and_applied_once(any_store):
    assert await any_store.applied_migrations() == sorted(migration_names(any_store))


async def test_history_limit_returns_newest_in_order(any_store):
    for i in range(5):
        await any_store.add_exchange("c", [Turn("user", f"u{i}"), Turn("assistant", f"a{i}")])
    assert [t.content for t in await any_store.history("c", limit=3)] == ["a3", "u4", "a4"]


async def test_reset_and_persona(any_store):
    await any_store.add_exchange("c", [Turn("user", "hi", "Sam"), Turn("assistant", "yo", "Orla")])
    await any_store.set_persona("c", "Bob")
    assert await any_store.history("c") == [Turn("user", "hi", "Sam"), Turn("assistant", "yo", "Orla")]
    assert await any_store.reset("c") == 2
    assert await any_store.history("c") == []
    assert await any_store.get_persona("c") == "Bob"  # reset forgets messages, not the channel's character
    assert await any_store.get_persona("nobody") is None


async def test_exchange_is_atomic(any_store):
    # the CHECK constraint rejects the second row: neither may be stored
    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.CheckViolation)):
        await any_store.add_exchange("c", [Turn("user", "hi"), Turn("robot", "nope")])
    assert await any_store.count_messages("c") == 0


async def test_a_retried_exchange_is_stored_once(any_store):
    turns = [Turn("user", "hi"), Turn("assistant", "yo")]
    for _ in range(3):
        await any_store.add_exchange("c", turns, "exchange-1")
    await any_store.add_exchange("c", turns, "exchange-2")  # the same words again, another exchange
    assert await any_store.count_messages("c") == 4


async def test_prune_drops_only_old_messages(any_store, monkeypatch):
    await any_store.add_exchange("c", [Turn("user", "old"), Turn("assistant", "old reply")])
    later = time.time() + 3600
    monkeypatch.setattr(time, "time", lambda: later)
    await any_store.add_exchange("c", [Turn("user", "new"), Turn("assistant", "new reply")])
    assert await any_store.prune(older_than_seconds=1800) == 2
    assert [t.content for t in await any_store.history("c")] == ["new", "new reply"]


async def test_cap_and_idle_conversations(any_store, monkeypatch):
    for i in range(3):
        await any_store.add_exchange("busy", [Turn("user", f"q{i}"), Turn("assistant", f"a{i}")])
    await any_store.add_exchange("quiet", [Turn("user", "x"), Turn("assistant", "y")])
    await any_store.set_persona("chosen", "Bob")
    assert await any_store.cap_messages(2) == 4
    assert [t.content for t in await any_store.history("busy")] == ["q2", "a2"]
    await any_store.reset("quiet")
    later = time.time() + 7200
    monkeypatch.setattr(time, "time", lambda: later)
    # "quiet" has no messages left; "chosen" keeps its character; "busy" still has messages
    assert await any_store.drop_idle_conversations(3600) == 1
    assert await any_store.count_conversations() == 2


async def test_concurrent_writers_each_keep_their_order(any_store):
    async def talk(conv: str) -> None:
        for i in range(10):
            await any_store.add_exchange(conv, [Turn("user", f"{conv}-q{i}"), Turn("assistant", f"{conv}-a{i}")])

    await asyncio.gather(*(talk(f"c{n}") for n in range(8)))
    for n in range(8):
        assert [t.content for t in await any_store.history(f"c{n}", 4)] == [f"c{n}-q8", f"c{n}-a8", f"c{n}-q9", f"c{n}-a9"]
    assert await any_store.count_messages() == 160


async def test_channel_cast_is_kept_apart_from_conversations(memory_url):
    """Discord --cast: a channel's active cast survives a restart, /reset and the retention sweeps."""
    store = create_store(memory_url)
    await store.open()
    assert await store.channel_cast("discord:1") is None  # never set: the whole cast
    await store.set_channel_cast("discord:1", ["Morty", "Rick"])
    await store.set_channel_cast("discord:1", ["Morty"])
    await store.set_channel_cast("discord:3", [])  # everyone removed: not the same as never set
    await store.add_exchange("discord:1", [Turn("user", "hi", "Sam"), Turn("assistant", "ahoy", "Morty")])
    await store.reset("discord:1")
    await store.drop_idle_conversations(-1)
    await store.close()
    reopened = create_store(memory_url)
    await reopened.open()
    assert await reopened.channel_cast("discord:1") == ["Morty"] and await reopened.channel_cast("discord:2") is None
    assert await reopened.channel_cast("discord:3") == []
    await reopened.close()


async def test_history_survives_reopen(tmp_path):
    path = tmp_path / "m.db"
    store = SqliteStore(path)
    await store.add_exchange("c", [Turn("user", "hi", "Sam"), Turn("assistant", "ahoy", "Orla")])
    await store.close()
    reopened = create_store(f"sqlite:///{path}")
    assert await reopened.history("c") == [Turn("user", "hi", "Sam"), Turn("assistant", "ahoy", "Orla")]
    assert reopened.sync.migrate() == []  # nothing left to apply
    await reopened.close()


async def test_postgres_history_is_shared_by_two_processes_stores(pg_url):
    """Two stores (as two bot processes would have) on one database see each other's turns and choices."""
    first, second = create_store(pg_url), create_store(pg_url)
    await asyncio.gather(first.open(), second.open())
    await first.add_exchange("discord:1", [Turn("user", "hi"), Turn("assistant", "ahoy")])
    await first.set_persona("discord:1", "Bob")
    assert [t.content for t in await second.history("discord:1")] == ["hi", "ahoy"]
    assert await second.get_persona("discord:1") == "Bob"
    await first.close()
    await second.close()


def test_sqlite_migrations_run_once_when_processes_start_together(tmp_path):
    """Several processes opening a new file at once: BEGIN IMMEDIATE serialises them, each migration runs once."""
    import subprocess
    import sys

    path = tmp_path / "race.db"
    code = "import sys; from charbot.memory_sqlite import SqliteMemory; print(','.join(SqliteMemory(sys.argv[1]).migrate()))"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(6)]
    results = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    db = sqlite3.connect(path)
    assert [r[0] for r in db.execute("SELECT name FROM _migrations ORDER BY name")] == [n for n, _ in memory_sqlite.MIGRATIONS]


async def test_postgres_migrations_run_once_when_processes_start_together(pg_url, postgres):
    stores = [create_store(pg_url) for _ in range(6)]
    await asyncio.gather(*(s.open() for s in stores))
    dbname = pg_url.rsplit("/", 1)[1]
    assert [r[0] for r in postgres.admin("SELECT name FROM _migrations ORDER BY applied_at", dbname=dbname)] == [
        n for n, _ in memory_postgres.MIGRATIONS]
    for s in stores:
        await s.close()


def test_unusable_path_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(Exception) as err:
        SqliteStore(blocker / "sub" / "m.db")
    assert "memory database" in str(err.value) and "CHARBOT_DB_PATH" in str(err.value)


def test_not_a_database_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(Exception, match="memory database .*junk.db"):
        SqliteStore(path)
