"""`charbot memory migrate SRC DST`: copy a memory store into another (SQLite file → PostgreSQL, say)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from charbot.errors import ConfigError
from charbot.memory import create_store, redact, scheme_of


@click.group("memory")
def memory_cmd() -> None:
    """Conversation memory: move it between stores."""


@memory_cmd.command("migrate")
@click.argument("src")
@click.argument("dst")
@click.option("--batch", default=1000, show_default=True, type=click.IntRange(1, 100_000), help="Messages copied per transaction.")
def migrate(src: str, dst: str, batch: int) -> None:
    """Copy every conversation of SRC into DST (each a SQLite file path, sqlite:///path or postgresql://…).

    Idempotent: run it again and only what is missing is copied. The destination's tables are created (named
    migrations) when new. Ends with a row count check."""
    if scheme_of(src) in ("", "sqlite") and not Path(src.removeprefix("sqlite://")).is_file():
        raise ConfigError(f"memory migrate: no SQLite file at {src}", "give the path of the bot's memory.db (db_path)")
    asyncio.run(_migrate(src, dst, batch))


async def _migrate(src_url: str, dst_url: str, batch: int) -> None:
    from charbot.memory_copy import copy_memory

    src, dst = create_store(src_url), create_store(dst_url)
    try:
        await src.open()
        await dst.open()
        copied = await copy_memory(src, dst, batch=batch)
        total = await dst.count_messages()
    finally:
        await src.close()
        await dst.close()
    click.echo(
        f"copied {copied.conversations} conversations and {copied.messages} messages from {redact(src_url)} to {redact(dst_url)}: "
        f"{copied.inserted} new, {copied.messages - copied.inserted} already there; the destination holds {total} messages; "
        f"{copied.casts} channel casts copied; row counts check out"
    )
