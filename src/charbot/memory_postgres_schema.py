"""PostgreSQL's named migrations: SQLite's schema (memory_sqlite_schema.py), migration by migration under the
same names. `PostgresStore.migrate` applies them under MIGRATION_LOCK, each once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import psycopg

Migration = Callable[[psycopg.AsyncConnection], Awaitable[None]]
MIGRATIONS: list[tuple[str, Migration]] = []
# pg_advisory_xact_lock key: any constant other applications are unlikely to pick ("charbot" in ASCII).
MIGRATION_LOCK = 0x63686172626F74


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
async def m001_initial(db: psycopg.AsyncConnection) -> None:
    await db.execute("""
        CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            persona TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        )""")
    await db.execute("""
        CREATE TABLE messages (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
            speaker TEXT,
            content TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL
        )""")
    await db.execute("CREATE INDEX messages_by_conversation ON messages(conversation_id, id)")


@migration
async def m002_message_created_index(db: psycopg.AsyncConnection) -> None:
    await db.execute("CREATE INDEX messages_by_created ON messages(created_at)")


@migration
async def m003_exchange_ids(db: psycopg.AsyncConnection) -> None:
    # See memory_sqlite_schema.m003_exchange_ids: a retried write stores each turn once.
    await db.execute("ALTER TABLE messages ADD COLUMN exchange_id TEXT, ADD COLUMN seq INTEGER")
    await db.execute("CREATE UNIQUE INDEX messages_by_exchange ON messages(exchange_id, seq)")


@migration
async def m004_channel_cast(db: psycopg.AsyncConnection) -> None:
    # See memory_sqlite_schema.m004_channel_cast: a channel's active cast, names in speaking order.
    await db.execute("CREATE TABLE channel_casts (channel TEXT PRIMARY KEY, names TEXT[] NOT NULL, updated_at DOUBLE PRECISION NOT NULL)")
