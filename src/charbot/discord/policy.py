"""Who the bot answers and when, as plain functions over plain facts (no discord objects), so the rules
are tested without a gateway."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True)
class MessageFacts:
    author_id: int
    channel_id: int
    guild_id: int | None = None  # None in DMs
    parent_channel_id: int | None = None  # a thread's channel
    role_ids: frozenset[int] = frozenset()
    author_is_bot: bool = False
    is_self: bool = False
    mentions_bot: bool = False
    replies_to_bot: bool = False
    calls_character: bool = False  # opens with the name of a character of the bot's cast
    replies_to_cast: bool = False  # replies to a line of the cast (its webhook message)

    @property
    def is_dm(self) -> bool:
        return self.guild_id is None


@dataclass(frozen=True)
class Rules:
    chat_channels: frozenset[int] = frozenset()
    allow_dms: bool = True
    allowed_users: frozenset[int] = frozenset()
    blocked_users: frozenset[int] = frozenset()
    allowed_roles: frozenset[int] = frozenset()
    blocked_roles: frozenset[int] = frozenset()
    allowed_channels: frozenset[int] = frozenset()
    blocked_channels: frozenset[int] = frozenset()
    allowed_guilds: frozenset[int] = frozenset()
    blocked_guilds: frozenset[int] = frozenset()

    @classmethod
    def from_settings(cls, d) -> "Rules":
        """From the `discord` settings group."""
        return cls(
            frozenset(d.chat_channels), d.allow_dms,
            frozenset(d.allowed_users), frozenset(d.blocked_users), frozenset(d.allowed_roles), frozenset(d.blocked_roles),
            frozenset(d.allowed_channels), frozenset(d.blocked_channels), frozenset(d.allowed_guilds), frozenset(d.blocked_guilds),
        )


@dataclass(frozen=True)
class Decision:
    answer: bool
    reason: str

    def __bool__(self) -> bool:
        return self.answer


def permitted(facts: MessageFacts, rules: Rules) -> Decision:
    """Allow/block lists. A block always wins; a non-empty allow list admits only what it names."""
    if facts.author_id in rules.blocked_users:
        return Decision(False, "user blocked")
    if rules.allowed_users and facts.author_id not in rules.allowed_users:
        return Decision(False, "user not in allow list")
    if facts.is_dm:
        return Decision(rules.allow_dms, "dm" if rules.allow_dms else "dms disabled")
    channels = {facts.channel_id} | ({facts.parent_channel_id} if facts.parent_channel_id else set())
    if channels & rules.blocked_channels:
        return Decision(False, "channel blocked")
    if rules.allowed_channels and not channels & rules.allowed_channels:
        return Decision(False, "channel not in allow list")
    if facts.guild_id in rules.blocked_guilds:
        return Decision(False, "server blocked")
    if rules.allowed_guilds and facts.guild_id not in rules.allowed_guilds:
        return Decision(False, "server not in allow list")
    if facts.role_ids & rules.blocked_roles:
        return Decision(False, "role blocked")
    if rules.allowed_roles and not facts.role_ids & rules.allowed_roles:
        return Decision(False, "no allowed role")
    return Decision(True, "permitted")


def should_answer(facts: MessageFacts, rules: Rules) -> Decision:
    """Never bots or itself; then allow/block lists; then: mentioned, a reply to the bot, a DM, or a chat channel."""
    if facts.is_self:
        return Decision(False, "own message")
    if facts.author_is_bot:
        return Decision(False, "author is a bot")
    allowed = permitted(facts, rules)
    if not allowed:
        return allowed
    if facts.is_dm:
        return Decision(True, "dm")
    if facts.mentions_bot:
        return Decision(True, "mentioned")
    if facts.replies_to_bot:
        return Decision(True, "reply to bot")
    if facts.replies_to_cast:
        return Decision(True, "reply to the cast")
    if facts.calls_character:
        return Decision(True, "character named")
    if {facts.channel_id, facts.parent_channel_id} & rules.chat_channels:
        return Decision(True, "chat channel")
    return Decision(False, "not addressed")


def conversation_id(channel_id: int) -> str:
    """One conversation per channel, thread or DM channel."""
    return f"discord:{channel_id}"


ZWJ = "\u200d"


def visible_text(text: str) -> str:
    """`text` without control and invisible format characters (zero-width spaces, bidi overrides, NUL, BEL).

    They carry nothing a reader sees, but reach the model and the memory; a message of nothing else is
    empty. The zero-width joiner stays between visible characters (it builds emoji such as families).
    """
    kept = "".join(c for c in text if c in "\n\t" or unicodedata.category(c) not in ("Cc", "Cf") or c == ZWJ)
    return kept if kept.replace(ZWJ, "").strip() else ""


def strip_mention(text: str, bot_id: int) -> str:
    """The visible text without the bot's own mention (<@id> or the legacy <@!id>), whitespace tidied."""
    return " ".join(re.sub(rf"<@!?{bot_id}>", " ", visible_text(text)).split())
