"""`charbot memory migrate SRC DST`: a bot's SQLite memory moved into PostgreSQL, idempotently, checked by row
counts; and back, so either way works."""

from __future__ import annotations

import asyncio

import pytest

from charbot.cli import main
from charbot.memory import Turn, create_store
from charbot.memory_sqlite import SqliteMemory

PASSWORD = "s3cret-Pa55"


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def old_bot_memory(path) -> SqliteMemory:
    """A memory file as a bot leaves it: turns from before exchange ids existed, later ones with them, a
    channel's character choice, a conversation that was reset."""
    db = SqliteMemory(path)
    db.add_exchange("discord:1", [Turn("user", "hi", "Sam"), Turn("assistant", "ahoy", "Orla")])  # no exchange id
    for i in range(3):
        db.add_exchange("discord:1", [Turn("user", f"q{i}", "Sam"), Turn("assistant", f"a{i}", "Orla")], f"x{i}")
    db.add_exchange("discord:2", [Turn("user", "same words"), Turn("assistant", "same words back")])
    db.add_exchange("discord:2", [Turn("user", "same words"), Turn("assistant", "same words back")])  # said twice
    db.set_persona("discord:2", "Bram Salt")
    db.set_persona("discord:3", "Pip")
    db.set_channel_cast("discord:chan:7", ["Rick", "Morty"])
    return db


def test_sqlite_memory_moves_into_postgres_once(tmp_path, pg_url, capsys):
    source = old_bot_memory(tmp_path / "memory.db")
    code, out, err = run_cli(capsys, "memory", "migrate", str(tmp_path / "memory.db"), pg_url)
    assert code == 0, err
    assert "copied 3 conversations and 12 messages" in out and "12 new, 0 already there" in out and "row counts check out" in out
    assert "1 channel casts copied" in out
    assert PASSWORD not in out + err and "charbot:***@" in out

    again = run_cli(capsys, "memory", "migrate", f"sqlite:///{tmp_path / 'memory.db'}", pg_url)
    assert again[0] == 0 and "0 new, 12 already there; the destination holds 12 messages; 0 channel casts" in again[1]  # idempotent

    async def check() -> None:
        pg = create_store(pg_url)
        for cid in ("discord:1", "discord:2"):
            assert await pg.history(cid) == source.history(cid)  # same turns, same order, same speakers
        assert [await pg.get_persona(c) for c in ("discord:1", "discord:2", "discord:3")] == [None, "Bram Salt", "Pip"]
        assert await pg.count_conversations() == 3
        assert await pg.channel_cast("discord:chan:7") == ["Rick", "Morty"]  # the channel's cast moved too
        await pg.close()

    asyncio.run(check())


def test_postgres_memory_moves_back_into_a_new_sqlite_file(tmp_path, pg_url, capsys):
    async def fill() -> None:
        pg = create_store(pg_url)
        await pg.add_exchange("api:orla:u1", [Turn("user", "hello"), Turn("assistant", "kettle's on")], "e1")
        await pg.set_channel_cast("discord:chan:7", ["Orla"])
        await pg.close()

    asyncio.run(fill())
    SqliteMemory(tmp_path / "new.db").set_channel_cast("discord:chan:7", ["Pip", "Orla"])  # chosen there meanwhile
    code, out, _ = run_cli(capsys, "memory", "migrate", pg_url, str(tmp_path / "new.db"))
    assert code == 0 and "1 conversations and 2 messages" in out and "0 channel casts copied" in out
    assert SqliteMemory(tmp_path / "new.db").channel_cast("discord:chan:7") == ["Pip", "Orla"]  # the destination's choice stays
    assert [t.content for t in SqliteMemory(tmp_path / "new.db").history("api:orla:u1")] == ["hello", "kettle's on"]


def test_a_missing_source_file_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "memory", "migrate", str(tmp_path / "nope.db"), str(tmp_path / "dst.db"))
    assert code == 2 and err.count("\n") == 1 and "no SQLite file at" in err
    assert not (tmp_path / "dst.db").exists()
