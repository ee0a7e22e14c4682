import sqlite3
import time

import pytest

from charbot.memory import MIGRATIONS, MemoryStore, Turn


def test_migrations_are_named_and_applied_once(tmp_path):
    path = tmp_path / "m.db"
    store = MemoryStore(path)
    names = [name for name, _ in MIGRATIONS]
    assert store.applied_migrations() == sorted(names)
    assert store.migrate() == []  # nothing left to apply
    store.close()
    again = MemoryStore(path)
    assert again.migrate() == [] and again.applied_migrations() == sorted(names)
    again.close()


def test_history_survives_reopen(tmp_path):
    path = tmp_path / "m.db"
    store = MemoryStore(path)
    store.add_exchange("c", [Turn("user", "hi", "Sam"), Turn("assistant", "ahoy", "Orla")])
    store.add_exchange("other", [Turn("user", "x"), Turn("assistant", "y")])
    store.close()
    reopened = MemoryStore(path)
    assert reopened.history("c") == [Turn("user", "hi", "Sam"), Turn("assistant", "ahoy", "Orla")]
    assert reopened.count_messages() == 4
    reopened.close()


def test_history_limit_returns_newest_in_order(store):
    for i in range(5):
        store.add_exchange("c", [Turn("user", f"u{i}"), Turn("assistant", f"a{i}")])
    assert [t.content for t in store.history("c", limit=3)] == ["a3", "u4", "a4"]


def test_reset_and_persona(store):
    store.add_exchange("c", [Turn("user", "hi"), Turn("assistant", "yo")])
    store.set_persona("c", "Bob")
    assert store.reset("c") == 2
    assert store.history("c") == []
    assert store.get_persona("c") == "Bob"  # reset forgets messages, not the channel's character
    assert store.get_persona("nobody") is None


def test_exchange_is_atomic(store):
    # the CHECK constraint rejects the second row: neither may be stored
    with pytest.raises(sqlite3.IntegrityError):
        store.add_exchange("c", [Turn("user", "hi"), Turn("robot", "nope")])
    assert store.count_messages("c") == 0


def test_prune_drops_only_old_messages(store, monkeypatch):
    store.add_exchange("c", [Turn("user", "old"), Turn("assistant", "old reply")])
    later = time.time() + 3600
    monkeypatch.setattr(time, "time", lambda: later)
    store.add_exchange("c", [Turn("user", "new"), Turn("assistant", "new reply")])
    assert store.prune(older_than_seconds=1800) == 2
    assert [t.content for t in store.history("c")] == ["new", "new reply"]


def test_unusable_path_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(Exception) as err:
        MemoryStore(blocker / "sub" / "m.db")
    assert "memory database" in str(err.value) and "CHARBOT_DB_PATH" in str(err.value)


def test_not_a_database_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(Exception, match="memory database .*junk.db"):
        MemoryStore(path)


def test_channel_cast_is_kept_apart_from_conversations(tmp_path):
    """Discord --cast: a channel's active cast survives a restart, /reset and the retention sweeps."""
    path = tmp_path / "m.db"
    store = MemoryStore(path)
    assert store.channel_cast("discord:1") is None  # never set: the whole cast
    store.set_channel_cast("discord:1", ["Morty", "Rick"])
    store.set_channel_cast("discord:1", ["Morty"])
    store.add_exchange("discord:1", [Turn("user", "hi", "Sam"), Turn("assistant", "ahoy", "Morty")])
    store.reset("discord:1")
    store.drop_idle_conversations(-1)
    store.close()
    reopened = MemoryStore(path)
    assert reopened.channel_cast("discord:1") == ["Morty"] and reopened.channel_cast("discord:2") is None
    reopened.close()
