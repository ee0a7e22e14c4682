"""Split a reply into Discord-sized messages at sentence, then line/word boundaries."""

from __future__ import annotations

import re

DISCORD_LIMIT = 2000
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"')\]]*\s+")


def _cut(text: str, limit: int) -> int:
    """Where to end the first chunk of `text`: the last sentence end, else newline, else space, within `limit`."""
    window = text[: limit + 1]
    ends = [m.end() for m in _SENTENCE_END.finditer(window) if m.end() <= limit]
    # A sentence end that leaves a tiny first chunk is worse than a word boundary near the limit.
    if ends and ends[-1] >= limit // 2:
        return ends[-1]
    for sep in ("\n", " "):
        at = window.rfind(sep, 0, limit + 1)
        if at > 0:
            return at + 1
    return limit  # one unbroken run of characters: a hard cut is all that is left


def split_message(text: str, limit: int = DISCORD_LIMIT) -> list[str]:
    """Non-empty chunks of at most `limit` characters whose concatenation is `text` modulo whitespace at cuts."""
    if limit < 1:
        raise ValueError("limit must be positive")
    chunks: list[str] = []
    rest = text.strip()
    while rest:
        if len(rest) <= limit:
            chunks.append(rest)
            break
        at = _cut(rest, limit)
        chunk = rest[:at].rstrip()
        if chunk:
            chunks.append(chunk)
        rest = rest[at:].lstrip()
    return chunks
