"""Conversation memory in SQLite: one row per turn, schema by named migrations, survives restarts.

WAL mode and one transaction per exchange mean a crash mid-generation loses at most the exchange that was
being generated, never the file.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from charbot.errors import CharbotError

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
def m003_channel_cast(db: sqlite3.Connection) -> None:
    # a channel's active cast (Discord --cast): names in speaking order, as JSON; no row: the whole cast
    db.execute("CREATE TABLE channel_casts (channel TEXT PRIMARY KEY, names TEXT NOT NULL, updated_at REAL NOT NULL)")


@dataclass(frozen=True)
class Turn:
    role: str  # "user" | "assistant"
    content: str
    speaker: str | None = None


class MemoryStoreError(CharbotError):
    pass


class MemoryStore:
    """Thread-safe SQLite store. Calls are short (one indexed query), so they run inline."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
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
        with self._lock:
            self._db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
            done = {row[0] for row in self._db.execute("SELECT name FROM _migrations")}
            applied = []
            for name, fn in MIGRATIONS:
                if name in done:
                    continue
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    fn(self._db)
                    self._db.execute("INSERT INTO _migrations VALUES (?, ?)", (name, time.time()))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                applied.append(name)
            return applied

    def applied_migrations(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT name FROM _migrations ORDER BY name")]

    # --- conversations -------------------------------------------------------------------------------
    def add_exchange(self, conversation_id: str, turns: list[Turn]) -> None:
        """Store the user's turn and the reply together: either both are remembered or neither."""
        now = time.time()
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._touch(conversation_id, now)
                self._db.executemany(
                    "INSERT INTO messages (conversation_id, role, speaker, content, created_at) VALUES (?, ?, ?, ?, ?)",
                    [(conversation_id, t.role, t.speaker, t.content, now) for t in turns],
                )
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
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
        with self._lock:
            try:
                self._touch(conversation_id, now)
                self._db.execute("UPDATE conversations SET persona = ? WHERE id = ?", (persona, conversation_id))
            except sqlite3.Error as exc:
                raise self._write_error(exc) from None

    # --- a channel's cast (kept apart from conversations: /reset and retention leave it alone) ---------------
    def channel_cast(self, channel: str) -> list[str] | None:
        """The character names active in `channel`, in order; None when it was never set."""
        with self._lock:
            row = self._db.execute("SELECT names FROM channel_casts WHERE channel = ?", (channel,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_channel_cast(self, channel: str, names: list[str]) -> None:
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO channel_casts (channel, names, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT(channel) DO UPDATE SET names = excluded.names, updated_at = excluded.updated_at",
                    (channel, json.dumps(list(names)), time.time()),
                )
            except sqlite3.Error as exc:
                raise self._write_error(exc) from None

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
            return self._db.execute(
                "SELECT COUNT(*) FROM messages WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
