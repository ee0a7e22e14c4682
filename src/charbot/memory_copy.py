"""Copying one memory store into another (`charbot memory migrate SRC DST`), e.g. a bot's SQLite file into
the PostgreSQL database its processes will share.

Idempotent: every message is keyed by its exchange id and position, so a second run (or a run interrupted and
started again) inserts only what is missing. Messages written before exchange ids existed get a key derived
from their content and source row, the same on every run. Conversations already in the destination keep their
character choice, and channels their cast (Discord --cast).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from charbot.errors import CharbotError
from charbot.memory import MessageRow, Store, redact


@dataclass(frozen=True)
class Copied:
    conversations: int
    messages: int  # in the source
    inserted: int  # new in the destination (the rest were there already)
    casts: int = 0  # channel casts copied (channels without one in the destination)


def keyed(row: MessageRow) -> MessageRow:
    """The row with an exchange key: its own, or one derived from what it is (stable across runs)."""
    rid, conversation, role, speaker, content, created_at, exchange_id, seq = row
    if exchange_id is None:
        digest = hashlib.sha256(f"{conversation}\0{rid}\0{role}\0{speaker}\0{content}\0{created_at!r}".encode()).hexdigest()
        exchange_id, seq = f"legacy:{digest[:32]}", 0
    return (rid, conversation, role, speaker, content, created_at, exchange_id, seq)


async def copy_memory(src: Store, dst: Store, *, batch: int = 1000) -> Copied:
    """Copy every conversation and message of `src` into `dst`, then check the row counts: every source
    conversation has at least as many messages in the destination. A mismatch is a CharbotError."""
    conversations = await src.dump_conversations()
    for start in range(0, len(conversations), batch):
        await dst.load(conversations[start:start + batch], [])  # before their messages, which reference them
    messages = inserted = 0
    after = 0
    while rows := await src.dump_messages(after, batch):
        inserted += await dst.load([], [keyed(r) for r in rows])
        messages += len(rows)
        after = rows[-1][0]
    casts = 0
    for channel, names in await src.dump_channel_casts():
        if await dst.channel_cast(channel) is None:
            await dst.set_channel_cast(channel, names)
            casts += 1
    short = [cid for cid, *_ in conversations if await dst.count_messages(cid) < await src.count_messages(cid)]
    if short:
        raise CharbotError(
            f"row count check failed: {len(short)} conversations have fewer messages in {redact(dst.location)} than in "
            f"{redact(src.location)} (first: {short[0]})",
            "run the same command again (it copies only what is missing); if it persists, the destination was pruned meanwhile",
        )
    return Copied(len(conversations), messages, inserted, casts)
