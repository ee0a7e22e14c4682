"""The cast: several character cards served by one bot and one model. Plain data (no discord objects): each
character's card, how talkative it is, and where Discord can fetch its picture.

A webhook message's avatar must be a URL Discord fetches itself, so a picture embedded in a card (a PNG card,
a CHARX icon) becomes one only when the bot's health page is reachable from outside (`discord_public_url`):
it is served there under /avatars/. A configured URL wins; a V3 card's icon asset that is already an
http(s) URL is used as it is; otherwise the webhook's default avatar shows.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from charbot.cards import CARD_SUFFIXES, read_card_file
from charbot.cards.charx import main_icon
from charbot.errors import ConfigError, PersonaError
from charbot.persona import CharacterCard

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Character:
    card: CharacterCard
    talkativeness: float  # 0..1: how likely it speaks up when nobody named it
    avatar_url: str | None
    image: bytes | None  # the card's embedded picture, served under /avatars/ when there is a public URL
    source: Path
    model: str | None = None  # a model of its own (discord_character_models); None: the bot's model

    @property
    def name(self) -> str:
        return self.card.name


def talkativeness_of(card: CharacterCard, default: float) -> float:
    """`extensions.talkativeness` as SillyTavern stores it (a string such as "0.5", or a number), within 0..1."""
    raw = card.data.extensions.get("talkativeness")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return default
    return min(1.0, max(0.0, value)) if value == value else default  # NaN: the default


def avatar_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.casefold()).strip("-") or "character"


def avatar_url_of(card: CharacterCard, image: bytes | None, configured: str | None, public_url: str | None) -> str | None:
    if configured:
        return configured
    icon = main_icon(card)
    if icon is not None and icon.uri.startswith(("http://", "https://")):
        return icon.uri
    if image is not None and public_url:
        return f"{public_url.rstrip('/')}/avatars/{quote(avatar_slug(card.name))}.png"
    return None


class Cast:
    """The characters by name, in the order they were loaded (file name order)."""

    def __init__(self, characters: list[Character]):
        self.characters = {c.name: c for c in characters}

    @property
    def names(self) -> list[str]:
        return list(self.characters)

    def __contains__(self, name: str) -> bool:
        return name in self.characters

    def __getitem__(self, name: str) -> Character:
        return self.characters[name]

    def find(self, name: str) -> Character | None:
        """The character called `name`, case-insensitively."""
        wanted = name.strip().casefold()
        return next((c for n, c in self.characters.items() if n.casefold() == wanted), None)

    def by_avatar(self, slug: str) -> Character | None:
        return next((c for c in self.characters.values() if c.image is not None and avatar_slug(c.name) == slug), None)


def load_cast(directory: Path, *, talkativeness: float = 0.5, avatar_urls: dict[str, str] | None = None,
              public_url: str | None = None, models: dict[str, str] | None = None) -> Cast:
    """Every card in `directory`; a bad one is a one-line PersonaError naming its file."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise PersonaError(f"cast_dir {directory} is not a directory", "pass --cast a folder of character cards (.json, .png, .charx)")
    characters: list[Character] = []
    seen: dict[str, Path] = {}
    avatar_urls, models = avatar_urls or {}, models or {}
    for path in sorted(p for p in directory.iterdir() if p.suffix.lower() in CARD_SUFFIXES and p.is_file()):
        file = read_card_file(path)
        name = file.card.name
        if name.casefold() in seen:
            raise PersonaError(f"{path}: the cast already has a character called {name!r} ({seen[name.casefold()].name})",
                               "rename one of the two cards or remove it from the cast folder")
        seen[name.casefold()] = path
        characters.append(Character(
            file.card, talkativeness_of(file.card, talkativeness), avatar_url_of(file.card, file.image, avatar_urls.get(name), public_url),
            file.image, path, models.get(name),
        ))
    if not characters:
        raise PersonaError(f"cast_dir {directory} holds no character cards", "put .json, .png or .charx cards in it (e.g. from `charbot prepare --cast`)")
    names = [c.name for c in characters]
    for setting, named in (("discord_avatar_urls", avatar_urls), ("discord_character_models", models)):
        if unknown := sorted(set(named) - set(names)):
            raise ConfigError(f"{setting} names {', '.join(map(repr, unknown))}, not in the cast ({', '.join(names)})",
                              "use the characters' names as their cards spell them")
    return Cast(characters)
