"""Conversation memory in SQLite: one row per turn, schema by named migrations, survives restarts.

WAL mode and one transaction per exchange mean a crash mid-generation loses at most the exchange that was
being generated, never the file. `SqliteMemory` is the synchronous store; `SqliteStore` is the async store the
engine uses, running every call on one thread of its own so the event loop never waits on the disk.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from charbot.memory import ConversationRow, MemoryStoreError, MessageRow, Turn
from charbot.memory_sqlite_schema import MIGRATIONS
from charbot.store_thread import StoreThread

INSERT_MESSAGE = (
    "INSERT INTO messages (conversation_id, role, speaker, content, created_at, exchange_id, seq) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (exchange_id, seq) DO NOTHING"
)


class SqliteMemory:
    """Thread-safe synchronous SQLite store. Calls are short (one indexed query each)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.location = str(path)
        self._lock = threading.RLock()
        self._grouped = False  # inside together(): writes share one transaction
        self._closed = False
        try:
            if str(path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self.migrate()
        except sqlite3.DatabaseError as exc:
            raise MemoryStoreError(
                f"memory database {self.path}: {exc}", "check the file, or set CHARBOT_DB_PATH to a new location"
            ) from None
        except OSError as exc:
            raise MemoryStoreError(f"memory database {self.path}: {exc.strerror}", "set CHARBOT_DB_PATH to a writable path") from None

    # --- schema --------------------------------------------------------------------------------------
    def migrate(self) -> list[str]:
        """Apply the migrations not applied yet, each once: BEGIN IMMEDIATE holds the file's write lock, and
        whether it is applied is read under that lock (another process may have applied it meanwhile)."""
        with self._lock:
            self._db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
            applied = []
            for name, fn in MIGRATIONS:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    if self._db.execute("SELECT 1 FROM _migrations WHERE name = ?", (name,)).fetchone() is None:
                        fn(self._db)
                        self._db.execute("INSERT INTO _migrations VALUES (?, ?)", (name, time.time()))
                        applied.append(name)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            return applied

    def applied_migrations(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT name FROM _migrations ORDER BY name")]

    # --- conversations -------------------------------------------------------------------------------
    def add_exchange(self, conversation_id: str, turns: Sequence[Turn], exchange_id: str | None = None) -> None:
        """Store the user's turn and the reply together: either both are remembered or neither."""
        now = time.time()
        rows = [(conversation_id, t.role, t.speaker, t.content, now, exchange_id, i if exchange_id else None) for i, t in enumerate(turns)]
        self._write(lambda: (self._touch(conversation_id, now), self._db.executemany(INSERT_MESSAGE, rows)))

    @contextlib.contextmanager
    def together(self):
        """The calls made inside share one transaction, begun by the first write and committed at the end: a
        burst of writes is one commit (8 µs a write here instead of 50). Each write is a savepoint of it, so one
        that fails undoes only itself; if the commit fails, none is kept and the error is raised here."""
        with self._lock:
            self._grouped = True
            try:
                yield
            finally:
                self._grouped = False
            if not self._closed and self._db.in_transaction:
                try:
                    self._db.execute("COMMIT")
                except sqlite3.Error as exc:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                    raise self._write_error(exc) from None

    def _write(self, work: Callable[[], object]) -> None:
        with self._lock:
            if self._grouped:
                return self._write_grouped(work)
            try:
                self._db.execute("BEGIN IMMEDIATE")
                work()
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise self._write_error(exc) from None

    def _write_grouped(self, work: Callable[[], object]) -> None:
        try:
            if not self._db.in_transaction:
                self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("SAVEPOINT write")
            work()
            self._db.execute("RELEASE write")
        except BaseException as exc:
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK TO write")
                    self._db.execute("RELEASE write")
            raise self._write_error(exc) from None

    def _write_error(self, exc: BaseException) -> BaseException:
        """Read-only file, full disk, locked or damaged file: one line for the log and health page.
        (A constraint or API misuse is a bug in the caller and stays what it is.)"""
        if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError)):
            return MemoryStoreError(f"memory database {self.path}: cannot save ({exc})", "free disk space and make the file writable")
        return exc

    def _touch(self, conversation_id: str, now: float) -> None:
        self._db.execute(
            "INSERT INTO conversations (id, created_at, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET updated_at = excluded.updated_at",
            (conversation_id, now, now),
        )

    def history(self, conversation_id: str, limit: int = 200) -> list[Turn]:
        """The newest `limit` turns, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT role, content, speaker FROM messages WHERE conversation_id = ? ORDER BY id DESC LIMIT ?",
                (conversation_id, limit),
            ).fetchall()
        return [Turn(role, content, speaker) for role, content, speaker in reversed(rows)]

    def reset(self, conversation_id: str) -> int:
        with self._lock:
            try:
                cur = self._db.execute("DELETE FROM messages WHERE conversation_id = ?", (conversation_id,))
            except sqlite3.Error as exc:
                raise self._write_error(exc) from None
            return cur.rowcount

    def get_persona(self, conversation_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT persona FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        return row[0] if row else None

    def set_persona(self, conversation_id: str, persona: str | None) -> None:
        now = time.time()
        self._write(lambda: (self._touch(conversation_id, now),
                             self._db.execute("UPDATE conversations SET persona = ? WHERE id = ?", (persona, conversation_id))))

    # --- a channel's cast (kept apart from conversations: /reset and retention leave it alone) ---------------
    def channel_cast(self, channel: str) -> list[str] | None:
        """The character names active in `channel`, in order; None when it was never set."""
        with self._lock:
            row = self._db.execute("SELECT names FROM channel_casts WHERE channel = ?", (channel,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_channel_cast(self, channel: str, names: Sequence[str]) -> None:
        self._write(lambda: self._db.execute(
            "INSERT INTO channel_casts (channel, names, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(channel) DO UPDATE SET names = excluded.names, updated_at = excluded.updated_at",
            (channel, json.dumps(list(names)), time.time()),
        ))

    def prune(self, older_than_seconds: float) -> int:
        """Forget messages older than the retention window; returns how many were deleted."""
        cutoff = time.time() - older_than_seconds
        with self._lock:
            return self._db.execute("DELETE FROM messages WHERE created_at < ?", (cutoff,)).rowcount

    def cap_messages(self, keep: int) -> int:
        """Keep only the newest `keep` messages of every conversation; returns how many were deleted."""
        with self._lock:
            return self._db.execute(
                "DELETE FROM messages WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER "
                "(PARTITION BY conversation_id ORDER BY id DESC) AS newer FROM messages) WHERE newer > ?)",
                (keep,),
            ).rowcount

    def drop_idle_conversations(self, older_than_seconds: float) -> int:
        """Forget conversations with no messages left, no persona choice and no activity within the window."""
        cutoff = time.time() - older_than_seconds
        with self._lock:
            return self._db.execute(
                "DELETE FROM conversations WHERE updated_at < ? AND persona IS NULL "
                "AND NOT EXISTS (SELECT 1 FROM messages WHERE messages.conversation_id = conversations.id)",
                (cutoff,),
            ).rowcount

    def count_conversations(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM conversations").fetchone()[0]

    def count_messages(self, conversation_id: str | None = None) -> int:
        with self._lock:
            if conversation_id is None:
                return self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
            return self._db.execute("SELECT COUNT(*) FROM messages WHERE conversation_id = ?", (conversation_id,)).fetchone()[0]

    # --- copying (`charbot memory migrate`) ----------------------------------------------------------
    def dump_conversations(self) -> list[ConversationRow]:
        with self._lock:
            return self._db.execute("SELECT id, persona, created_at, updated_at FROM conversations ORDER BY id").fetchall()

    def dump_messages(self, after_id: int, limit: int) -> list[MessageRow]:
        with self._lock:
            return self._db.execute(
                "SELECT id, conversation_id, role, speaker, content, created_at, exchange_id, seq FROM messages "
                "WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit),
            ).fetchall()

    def dump_channel_casts(self) -> list[tuple[str, list[str]]]:
        with self._lock:
            return [(channel, json.loads(names)) for channel, names in self._db.execute("SELECT channel, names FROM channel_casts ORDER BY channel")]

    def load(self, conversations: Sequence[ConversationRow], messages: Sequence[MessageRow]) -> int:
        """Insert what is not there yet (messages are keyed by exchange id and seq); returns messages inserted."""
        inserted = 0

        def work() -> None:
            nonlocal inserted
            self._db.executemany("INSERT INTO conversations VALUES (?, ?, ?, ?) ON CONFLICT (id) DO NOTHING", conversations)
            for row in messages:
                inserted += self._db.execute(INSERT_MESSAGE, row[1:]).rowcount

        self._write(work)
        return inserted

    def close(self) -> None:
        with self._lock:
            if self._db.in_transaction:  # a batch's writes made before the close are kept
                self._db.execute("COMMIT")
            self._db.close()
            self._closed = True


def _delegate(name: str):
    async def call(self: SqliteStore, *args, **kwargs):
        return await self._thread.call(lambda: getattr(self.sync, name)(*args, **kwargs))

    call.__name__ = name
    call.__doc__ = getattr(SqliteMemory, name).__doc__
    return call


class SqliteStore:
    """The async store over `SqliteMemory`: each call runs on the store's one thread (SQLite serialises
    writers anyway), so the event loop is never blocked. `sync` is the synchronous store itself."""

    def __init__(self, path: str | Path):
        self.sync = SqliteMemory(path)
        self.path = self.sync.path
        self.location = self.sync.location
        self._thread = StoreThread("charbot-sqlite", together=self.sync.together)

    async def open(self) -> None:
        """Nothing to do: the file was opened and migrated when the store was made."""

    async def close(self) -> None:
        await self._thread.call(self.sync.close)
        self._thread.stop()

    applied_migrations = _delegate("applied_migrations")
    add_exchange = _delegate("add_exchange")
    history = _delegate("history")
    reset = _delegate("reset")
    get_persona = _delegate("get_persona")
    set_persona = _delegate("set_persona")
    channel_cast = _delegate("channel_cast")
    set_channel_cast = _delegate("set_channel_cast")
    prune = _delegate("prune")
    cap_messages = _delegate("cap_messages")
    drop_idle_conversations = _delegate("drop_idle_conversations")
    count_conversations = _delegate("count_conversations")
    count_messages = _delegate("count_messages")
    dump_conversations = _delegate("dump_conversations")
    dump_messages = _delegate("dump_messages")
    dump_channel_casts = _delegate("dump_channel_casts")
    load = _delegate("load")
