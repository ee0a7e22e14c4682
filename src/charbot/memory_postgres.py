"""Conversation memory in PostgreSQL, shared by every bot process (psycopg 3, async, with a connection pool).

The schema is SQLite's, migration by migration under the same names. Migrations take a transaction-scoped
advisory lock, so processes starting together apply each one exactly once. A database that cannot be reached
is `MemoryUnavailable` (the engine retries writes, the user is told the short error for reads); at `open()`,
every failure is a one-line ConfigError naming memory_url. The password never leaves this module: every
message is built from `location` (masked) and scrubbed of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import psycopg
from psycopg import errors as pgerrors
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from charbot.errors import ConfigError
from charbot.memory import ConversationRow, MemoryStoreError, MemoryUnavailable, MessageRow, Turn, redact
from charbot.memory_postgres_schema import MIGRATION_LOCK, MIGRATIONS

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5  # seconds to reach the server
POOL_TIMEOUT = 5.0  # seconds a call waits for a connection before the database counts as unavailable


INSERT_MESSAGE = (
    "INSERT INTO messages (conversation_id, role, speaker, content, created_at, exchange_id, seq) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (exchange_id, seq) DO NOTHING"
)
# The exchange in one statement (so one round trip, and atomic without BEGIN/COMMIT): the conversation row
# upserted, then its turns in order, each at most once per (exchange_id, seq).
ADD_EXCHANGE = """
WITH conversation AS (
    INSERT INTO conversations (id, created_at, updated_at) VALUES (%(conversation)s, %(now)s, %(now)s)
    ON CONFLICT (id) DO UPDATE SET updated_at = excluded.updated_at RETURNING id)
INSERT INTO messages (conversation_id, role, speaker, content, created_at, exchange_id, seq)
SELECT conversation.id, t.role, t.speaker, t.content, %(now)s, %(exchange)s::text,
       CASE WHEN %(exchange)s::text IS NULL THEN NULL ELSE (t.n - 1)::integer END
FROM conversation, unnest(%(roles)s::text[], %(speakers)s::text[], %(contents)s::text[]) WITH ORDINALITY AS t(role, speaker, content, n)
ORDER BY t.n
ON CONFLICT (exchange_id, seq) DO NOTHING
"""
TOUCH = (
    "INSERT INTO conversations (id, created_at, updated_at) VALUES (%s, %s, %s) "
    "ON CONFLICT (id) DO UPDATE SET updated_at = excluded.updated_at"
)


class PostgresStore:
    def __init__(self, url: str, *, pool_size: int = 8, pool_timeout: float = POOL_TIMEOUT):
        self.location = redact(url)
        self._url = url
        self._password = urlsplit(url).password or ""
        self._pool_size, self._pool_timeout = pool_size, pool_timeout
        self._pool: AsyncConnectionPool | None = None
        self._opening = asyncio.Lock()

    # --- lifecycle -----------------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect once (so a wrong URL, password or permission is reported now, precisely), migrate, then
        start the pool. Raises a ConfigError naming memory_url."""
        async with self._opening:
            if self._pool is not None:
                return
            try:
                async with await psycopg.AsyncConnection.connect(self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as db:
                    applied = await self._migrate(db)
            except psycopg.Error as exc:
                raise self._config_error(exc) from None
            if applied:
                log.warning("memory %s: applied migrations %s", self.location, ", ".join(applied))
            # All connections are made now: libpq computes a SCRAM login on the calling thread, which is the event
            # loop's, so logging in while serving would hold the loop for a few ms per connection.
            pool = AsyncConnectionPool(
                self._url, min_size=self._pool_size, max_size=self._pool_size, open=False, timeout=self._pool_timeout, name="charbot-memory",
                kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT},
                # a connection the server dropped (restart, failover) is replaced before it is handed out
                check=AsyncConnectionPool.check_connection,
            )
            try:
                await pool.open(wait=True, timeout=4 * CONNECT_TIMEOUT)
            except PoolTimeout:
                await pool.close()
                raise ConfigError(f"memory_url {self.location}: could not open {self._pool_size} connections within "
                                  f"{4 * CONNECT_TIMEOUT} s", "check the server's max_connections and the network") from None
            self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _migrate(self, db: psycopg.AsyncConnection) -> list[str]:
        """Each pending migration in a transaction of its own, under the advisory lock, re-checked once the
        lock is held: whichever process gets it first applies the migration, the others find it done."""
        applied: list[str] = []
        for name, fn in MIGRATIONS:
            if await self._is_applied(db, name):
                continue  # no lock, no CREATE: a user without CREATE permission can use a migrated database
            async with db.transaction():
                await db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                await db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
                if await self._is_applied(db, name):
                    continue
                await fn(db)
                await db.execute("INSERT INTO _migrations VALUES (%s, %s)", (name, time.time()))
                applied.append(name)
        return applied

    @staticmethod
    async def _is_applied(db: psycopg.AsyncConnection, name: str) -> bool:
        cur = await db.execute("SELECT to_regclass('_migrations') IS NOT NULL")
        if not (await cur.fetchone())[0]:
            return False
        cur = await db.execute("SELECT 1 FROM _migrations WHERE name = %s", (name,))
        return await cur.fetchone() is not None

    # --- errors --------------------------------------------------------------------------------------
    def _scrub(self, exc: BaseException) -> str:
        text = " ".join(str(exc).split()) or type(exc).__name__
        return text.replace(self._password, "***") if self._password else text

    def _config_error(self, exc: psycopg.Error) -> ConfigError:
        where = f"memory_url {self.location}"
        reason = self._scrub(exc)
        if isinstance(exc, pgerrors.InsufficientPrivilege):
            return ConfigError(f"{where}: cannot create charbot's tables ({reason})",
                               "GRANT CREATE ON SCHEMA public to this user for the first start, or use a database it owns")
        if isinstance(exc, pgerrors.InvalidPassword) or "password authentication failed" in reason or "no password supplied" in reason:
            return ConfigError(f"{where}: the server refused the user or password ({reason})",
                               "check the user and password in memory_url (or PGPASSWORD)")
        if isinstance(exc, pgerrors.InvalidCatalogName) or ("database" in reason and "does not exist" in reason):
            return ConfigError(f"{where}: no such database ({reason})", "create it (createdb) or fix the name in memory_url")
        if isinstance(exc, psycopg.OperationalError):
            return ConfigError(f"{where}: cannot reach the server ({reason})",
                               "check the host and port in memory_url and that PostgreSQL is running and reachable")
        return ConfigError(f"{where}: {reason}", "check memory_url and the database")

    @asynccontextmanager
    async def _connection(self):
        """A pooled connection; losing the server (now or mid-call) is MemoryUnavailable."""
        if self._pool is None:
            await self.open()
        try:
            async with self._pool.connection() as db:  # type: ignore[union-attr]
                yield db
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
            raise MemoryUnavailable(f"memory database {self.location}: unavailable ({self._scrub(exc)})",
                                    "check that PostgreSQL is up; charbot reconnects by itself") from None
        except (pgerrors.InsufficientPrivilege, pgerrors.ReadOnlySqlTransaction, pgerrors.DiskFull) as exc:
            raise MemoryStoreError(f"memory database {self.location}: cannot save ({self._scrub(exc)})",
                                   "check the database's permissions and free space") from None

    async def _fetch(self, sql: str, params: tuple = ()) -> list[tuple]:
        async with self._connection() as db:
            cur = await db.execute(sql, params)
            return await cur.fetchall()

    async def _count(self, sql: str, params: tuple = ()) -> int:
        async with self._connection() as db:
            return (await db.execute(sql, params)).rowcount

    # --- the store -----------------------------------------------------------------------------------
    async def applied_migrations(self) -> list[str]:
        return [r[0] for r in await self._fetch("SELECT name FROM _migrations ORDER BY name")]

    async def add_exchange(self, conversation_id: str, turns: Sequence[Turn], exchange_id: str | None = None) -> None:
        params = {"conversation": conversation_id, "now": time.time(), "exchange": exchange_id, "roles": [t.role for t in turns],
                  "speakers": [t.speaker for t in turns], "contents": [t.content for t in turns]}
        async with self._connection() as db:
            await db.execute(ADD_EXCHANGE, params)

    async def history(self, conversation_id: str, limit: int = 200) -> list[Turn]:
        rows = await self._fetch(
            "SELECT role, content, speaker FROM messages WHERE conversation_id = %s ORDER BY id DESC LIMIT %s", (conversation_id, limit)
        )
        return [Turn(role, content, speaker) for role, content, speaker in reversed(rows)]

    async def reset(self, conversation_id: str) -> int:
        return await self._count("DELETE FROM messages WHERE conversation_id = %s", (conversation_id,))

    async def get_persona(self, conversation_id: str) -> str | None:
        rows = await self._fetch("SELECT persona FROM conversations WHERE id = %s", (conversation_id,))
        return rows[0][0] if rows else None

    async def set_persona(self, conversation_id: str, persona: str | None) -> None:
        now = time.time()
        async with self._connection() as db, db.transaction():
            await db.execute(TOUCH, (conversation_id, now, now))
            await db.execute("UPDATE conversations SET persona = %s WHERE id = %s", (persona, conversation_id))

    async def channel_cast(self, channel: str) -> list[str] | None:
        rows = await self._fetch("SELECT names FROM channel_casts WHERE channel = %s", (channel,))
        return list(rows[0][0]) if rows else None

    async def set_channel_cast(self, channel: str, names: Sequence[str]) -> None:
        async with self._connection() as db:
            await db.execute(
                "INSERT INTO channel_casts (channel, names, updated_at) VALUES (%s, %s::text[], %s) "
                "ON CONFLICT (channel) DO UPDATE SET names = excluded.names, updated_at = excluded.updated_at",
                (channel, list(names), time.time()),
            )

    async def prune(self, older_than_seconds: float) -> int:
        return await self._count("DELETE FROM messages WHERE created_at < %s", (time.time() - older_than_seconds,))

    async def cap_messages(self, keep: int) -> int:
        return await self._count(
            "DELETE FROM messages WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER "
            "(PARTITION BY conversation_id ORDER BY id DESC) AS newer FROM messages) ranked WHERE newer > %s)", (keep,)
        )

    async def drop_idle_conversations(self, older_than_seconds: float) -> int:
        return await self._count(
            "DELETE FROM conversations WHERE updated_at < %s AND persona IS NULL "
            "AND NOT EXISTS (SELECT 1 FROM messages WHERE messages.conversation_id = conversations.id)",
            (time.time() - older_than_seconds,),
        )

    async def count_conversations(self) -> int:
        return (await self._fetch("SELECT COUNT(*) FROM conversations"))[0][0]

    async def count_messages(self, conversation_id: str | None = None) -> int:
        if conversation_id is None:
            return (await self._fetch("SELECT COUNT(*) FROM messages"))[0][0]
        return (await self._fetch("SELECT COUNT(*) FROM messages WHERE conversation_id = %s", (conversation_id,)))[0][0]

    # --- copying (`charbot memory migrate`) ----------------------------------------------------------
    async def dump_conversations(self) -> list[ConversationRow]:
        return await self._fetch("SELECT id, persona, created_at, updated_at FROM conversations ORDER BY id")

    async def dump_messages(self, after_id: int, limit: int) -> list[MessageRow]:
        return await self._fetch(
            "SELECT id, conversation_id, role, speaker, content, created_at, exchange_id, seq FROM messages "
            "WHERE id > %s ORDER BY id LIMIT %s", (after_id, limit),
        )

    async def dump_channel_casts(self) -> list[tuple[str, list[str]]]:
        return [(channel, list(names)) for channel, names in await self._fetch("SELECT channel, names FROM channel_casts ORDER BY channel")]

    async def load(self, conversations: Sequence[ConversationRow], messages: Sequence[MessageRow]) -> int:
        inserted = 0
        async with self._connection() as db, db.transaction():
            async with db.cursor() as cur:
                await cur.executemany("INSERT INTO conversations VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO NOTHING", list(conversations))
                for row in messages:
                    await cur.execute(INSERT_MESSAGE, row[1:])
                    inserted += cur.rowcount
        return inserted
