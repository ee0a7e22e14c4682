"""Who speaks in a scene, as plain functions over plain data (names, text, talkativeness, a random source), so
the rules are tested without a gateway. The order follows SillyTavern's group chats ("natural order"):
characters named in the message first; otherwise each rolls against its talkativeness; the last speaker
does not answer itself."""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence

BOLD_NAME = re.compile(r"^\*\*(.+?)\*\*:? ")


def _pattern(name: str) -> re.Pattern:
    # "Morty, …", "@Morty", "…said Morty." — the name as a whole word, any case
    return re.compile(rf"(?<![\w@])@?{re.escape(name)}(?!\w)", re.IGNORECASE)


def aliases(names: Sequence[str]) -> dict[str, str]:
    """What each character can be called: its full name, and its first word when no other character shares it
    ("Rick" for "Rick Sanchez")."""
    out = {n.casefold(): n for n in names}
    firsts: dict[str, list[str]] = {}
    for name in names:
        first = name.split()[0] if name.split() else name
        if first.casefold() != name.casefold() and len(first) >= 3:
            firsts.setdefault(first.casefold(), []).append(name)
    for first, owners in firsts.items():
        if len(owners) == 1 and first not in out:
            out[first] = owners[0]
    return out


def named_in(text: str, names: Sequence[str]) -> list[str]:
    """The characters `text` names, in the order it first names them."""
    found: list[tuple[int, str]] = []
    for alias, name in aliases(names).items():
        m = _pattern(alias).search(text)
        if m is not None:
            found.append((m.start(), name))
    ordered: list[str] = []
    for _, name in sorted(found):
        if name not in ordered:
            ordered.append(name)
    return ordered


def called_by_name(text: str, names: Sequence[str]) -> str | None:
    """The character a message opens with ("Morty, …", "@Morty …"): that addresses it anywhere, like a mention.
    (A name further in only picks who answers a message that is addressed otherwise.)"""
    stripped = text.lstrip()
    for alias, name in sorted(aliases(names).items(), key=lambda p: -len(p[0])):  # "Rick Sanchez" before "Rick"
        if re.match(rf"@?{re.escape(alias)}(?!\w)", stripped, re.IGNORECASE):
            return name
    return None


def author_character(*, names: Sequence[str], author_name: str, content: str, webhook_id: int | None, application_id: int | None,
                     author_id: int, bot_id: int) -> str | None:
    """Which of the cast said a message: a webhook message this bot's application posted under a character's
    name, or the bot's own fallback message that starts with the name in bold. None for anything else."""
    if webhook_id is not None:
        return author_name if application_id == bot_id and author_name in names else None
    if author_id == bot_id and (m := BOLD_NAME.match(content)) and m.group(1) in names:
        return m.group(1)
    return None


def first_speaker(active: Sequence[str], text: str, *, replied_to: str | None = None, default: str | None = None,
                  talkativeness: Mapping[str, float], rng: random.Random) -> str:
    """Who answers a person's message: the character it replies to, else the first it names, else the channel's
    default, else the first to win its talkativeness roll, else the most talkative."""
    if replied_to in active:
        return replied_to
    named = [n for n in named_in(text, active)]
    if named:
        return named[0]
    if default in active:
        return default
    for name in active:
        if rng.random() < talkativeness.get(name, 0.5):
            return name
    return max(active, key=lambda n: talkativeness.get(n, 0.5))  # max() keeps the first of equals


def next_speaker(active: Sequence[str], last: str, said: str, *, talkativeness: Mapping[str, float], rng: random.Random) -> str | None:
    """Who answers a character's line: another character it names, else the first other one to win its
    talkativeness roll, else nobody (the scene rests until a person speaks)."""
    others = [n for n in active if n != last]
    named = named_in(said, others)
    if named:
        return named[0]
    for name in others:
        if rng.random() < talkativeness.get(name, 0.5):
            return name
    return None
