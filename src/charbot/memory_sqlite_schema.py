"""The SQLite memory's schema, as named migrations applied in order, each once (memory_sqlite.py runs them).
memory_postgres_schema.py has the same names for the same changes."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

MIGRATIONS: list[tuple[str, Callable[[sqlite3.Connection], None]]] = []


def migration(fn: Callable[[sqlite3.Connection], None]):
    MIGRATIONS.append((fn.__name__, fn))
    return fn


def _statements(db: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT the migration's transaction half-way; run statements one by one instead.
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


@migration
def m001_initial(db: sqlite3.Connection) -> None:
    _statements(
        db,
        """
        CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            persona TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
            speaker TEXT,
            content TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE INDEX messages_by_conversation ON messages(conversation_id, id);
        """
    )


@migration
def m002_message_created_index(db: sqlite3.Connection) -> None:
    # retention sweeps delete by age
    db.execute("CREATE INDEX messages_by_created ON messages(created_at)")


@migration
def m003_exchange_ids(db: sqlite3.Connection) -> None:
    # A retried write (or a second `memory migrate`) stores each turn once: (exchange_id, seq) is unique.
    # Older rows have NULLs, which never conflict.
    _statements(
        db,
        """
        ALTER TABLE messages ADD COLUMN exchange_id TEXT;
        ALTER TABLE messages ADD COLUMN seq INTEGER;
        CREATE UNIQUE INDEX messages_by_exchange ON messages(exchange_id, seq)
        """,
    )


@migration
def m004_channel_cast(db: sqlite3.Connection) -> None:
    # a channel's active cast (Discord --cast): names in speaking order, as JSON; no row: the whole cast
    db.execute("CREATE TABLE channel_casts (channel TEXT PRIMARY KEY, names TEXT NOT NULL, updated_at REAL NOT NULL)")
