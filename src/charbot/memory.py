"""Conversation memory: one async store protocol, a SQLite and a PostgreSQL implementation.

`memory_url` picks one: a file path or `sqlite:///path` (the zero-setup default, one machine), or
`postgresql://user@host/db` (several bot processes on several machines sharing every conversation). Everything
that is per conversation or per channel (turns, the character chosen, what retention deletes) lives in the
store, so every process sees the same state. The engine awaits the store: a slow database never blocks the
event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from charbot.errors import CharbotError, ConfigError

POSTGRES_SCHEMES = ("postgresql", "postgres")
log = logging.getLogger(__name__)
URL_FIX = "set memory_url (CHARBOT_MEMORY_URL / --memory-url) to a file path, sqlite:///path or postgresql://user@host:5432/db"


@dataclass(frozen=True)
class Turn:
    role: str  # "user" | "assistant"
    content: str
    speaker: str | None = None


# What `charbot memory migrate` copies: (id, persona, created_at, updated_at) and
# (conversation_id, role, speaker, content, created_at, exchange_id, seq), with the source's row id first.
ConversationRow = tuple[str, str | None, float, float]
MessageRow = tuple[int, str, str, str | None, str, float, str | None, int | None]


class MemoryStoreError(CharbotError):
    user_message = "My memory isn't reachable right now; please try again in a moment."


class MemoryUnavailable(MemoryStoreError):
    """The database could not be reached (down, restarting, network): the same call may work a moment later."""


class Store(Protocol):
    """What the engine, retention and the transports use. `location` says where, any password masked: it is
    safe for logs, errors and /healthz. `add_exchange` with an `exchange_id` stores it at most once, however
    often it is retried."""

    location: str

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def applied_migrations(self) -> list[str]: ...
    async def add_exchange(self, conversation_id: str, turns: Sequence[Turn], exchange_id: str | None = None) -> None: ...
    async def history(self, conversation_id: str, limit: int = 200) -> list[Turn]: ...
    async def reset(self, conversation_id: str) -> int: ...
    async def get_persona(self, conversation_id: str) -> str | None: ...
    async def set_persona(self, conversation_id: str, persona: str | None) -> None: ...
    async def channel_cast(self, channel: str) -> list[str] | None: ...
    async def set_channel_cast(self, channel: str, names: Sequence[str]) -> None: ...
    async def prune(self, older_than_seconds: float) -> int: ...
    async def cap_messages(self, keep: int) -> int: ...
    async def drop_idle_conversations(self, older_than_seconds: float) -> int: ...
    async def count_conversations(self) -> int: ...
    async def count_messages(self, conversation_id: str | None = None) -> int: ...
    async def dump_conversations(self) -> list[ConversationRow]: ...
    async def dump_messages(self, after_id: int, limit: int) -> list[MessageRow]: ...
    async def dump_channel_casts(self) -> list[tuple[str, list[str]]]: ...
    async def load(self, conversations: Sequence[ConversationRow], messages: Sequence[MessageRow]) -> int: ...


def redact(url: str) -> str:
    """`url` with its password masked (`postgresql://bot:***@db/charbot`); anything else unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.password:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def check_url(url: str) -> str:
    """A memory_url's scheme is one charbot knows (the settings validate with it, before anything starts)."""
    scheme = scheme_of(url)
    if scheme and scheme != "sqlite" and scheme not in POSTGRES_SCHEMES:
        raise ValueError(f"unknown scheme {scheme}:// (use a file path, sqlite:///path or postgresql://…)")
    return url


def create_store(url: str | Path, *, timeout: float = 5.0) -> Store:
    """The store `url` names, not yet opened (`await store.open()` connects and migrates). SQLite opens its
    file here already: a local file that cannot be used is better reported before anything starts. `timeout`:
    how long a PostgreSQL call waits for a connection before the database counts as unavailable."""
    text = str(url)
    scheme = scheme_of(text)
    if scheme in POSTGRES_SCHEMES:
        try:
            from charbot.memory_postgres import PostgresStore
        except ImportError as exc:  # the postgres extra is optional: SQLite needs nothing
            raise ConfigError(
                f"memory_url {redact(text)} is PostgreSQL, but {exc.name} is not installed", "pip install 'charbot[postgres]'"
            ) from None
        return PostgresStore(text, pool_timeout=timeout)
    if scheme and scheme != "sqlite":
        raise ConfigError(f"memory_url {redact(text)}: unknown scheme {scheme}://", URL_FIX)
    from charbot.memory_sqlite import SqliteStore

    return SqliteStore(text[len("sqlite://"):] if scheme else text)


async def write_exchange(store: Store, conversation_id: str, turns: Sequence[Turn], retry_seconds: float,
                         failed: Callable[[MemoryStoreError], None]) -> bool:
    """Store a delivered exchange; True when stored. An unreachable database is retried (for `retry_seconds`,
    the conversation's next turn waiting meanwhile) under one exchange id: stored once, however often retried.
    Each failure goes to `failed`; a write that cannot succeed (a full disk) is logged and dropped."""
    exchange = uuid.uuid4().hex
    deadline = time.monotonic() + retry_seconds
    wait = 0.05
    while True:
        try:
            await store.add_exchange(conversation_id, turns, exchange)
            return True
        except MemoryUnavailable as exc:
            failed(exc)
            if time.monotonic() + wait > deadline:
                log.error("reply not remembered in %s: %s", conversation_id, exc)
                return False
            log.info("memory unavailable; retrying the write of %s in %.2f s", conversation_id, wait)
            await asyncio.sleep(wait)
            wait = min(wait * 2, 1.0)
        except MemoryStoreError as exc:
            failed(exc)
            log.error("reply not remembered in %s: %s", conversation_id, exc)
            return False
