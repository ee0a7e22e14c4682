"""A cast for the Discord tests: Rick and Morty as plain JSON cards (talkativeness as SillyTavern stores it),
a guild where the bot may or may not manage webhooks, and a scripted model that answers as whoever its
prompt says it is."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import ScriptedBackend
from fakediscord.permissions import MANAGE_WEBHOOKS

BASE = (1 << 10) | (1 << 11) | (1 << 16) | (1 << 31) | (1 << 38)  # what the invite grants without a cast
MANAGE_CHANNELS = 1 << 4


def card(name: str, talkativeness: float | str | None = None, **data) -> dict:
    extensions = {} if talkativeness is None else {"talkativeness": str(talkativeness)}
    return {"spec": "chara_card_v2", "spec_version": "2.0",
            "data": {"name": name, "description": f"{name} of the test cast.", "extensions": extensions, **data}}


def write_cast(directory: Path, cards: dict[str, dict]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for stem, c in cards.items():
        (directory / f"{stem}.json").write_text(json.dumps(c), encoding="utf-8")
    return directory


def rick_and_morty(directory: Path, rick: float = 0.0, morty: float = 0.0) -> Path:
    return write_cast(directory, {"rick": card("Rick", rick), "morty": card("Morty", morty)})


def speaker_of(prompt) -> str:
    """Whose prompt this is: the card's name in the default system line ("You are Rick. …")."""
    return re.search(r"You are (\w+)\.", prompt.messages[0].content).group(1)


def in_character(lines: dict[str, str] | None = None) -> ScriptedBackend:
    """Answers as the prompt's character: `lines[name]`, or "<name> here."."""
    lines = lines or {}
    return ScriptedBackend(respond=lambda p: lines.get(speaker_of(p), f"{speaker_of(p)} here."))


def guild_with_webhooks(state, *, manage_webhooks: bool = True):
    """A guild (#general, #chat) where the bot has the invite's permissions, plus Manage Webhooks if asked, and a user."""
    guild = state.add_guild()
    state.grant_bot(guild, BASE | (MANAGE_WEBHOOKS if manage_webhooks else 0))
    return guild, state.channel(guild, "general"), state.channel(guild, "chat"), state.user("marek")


def executes(fake, hook: dict | None = None) -> list:
    """Webhook executions that made a message (all webhooks, or `hook`'s)."""
    prefix = f"/webhooks/{hook['id']}/" if hook else "/webhooks/"
    return [c for c in fake.state.calls if c.method == "POST" and c.path.startswith(prefix) and c.status < 300
            and not c.path.startswith("/webhooks/" + str(fake.state.app_id))]


def strict(allowed: dict) -> bool:
    """allowed_mentions that can ping nobody: no parse types, no listed users or roles, no replied-user ping."""
    return allowed["parse"] == [] and not allowed.get("users") and not allowed.get("roles") and not allowed.get("replied_user", False)
