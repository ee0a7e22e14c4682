"""The loaded characters as the API names them: each card is a model id, a lowercase slug of its name
(`Orla` → `orla`, `Pickle Rick` → `pickle-rick`), and what the page shows of it."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Any

from charbot.persona import CharacterCard, example_dialogues, render, substitute
from charbot.serve.openai_api import ApiError

# Only images carried inside the card: the page loads nothing from elsewhere (it must work offline).
_AVATAR = re.compile(r"^data:image/(png|jpeg|gif|webp|svg\+xml);base64,[A-Za-z0-9+/=\s]+$")
CARD_FIELDS = ("description", "personality", "scenario", "creator_notes", "creator", "character_version")


def slug(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-") or "character"


def avatar(card: CharacterCard) -> str | None:
    """A data: image URL from the card's top-level `avatar` (TavernAI's field) or its `extensions.avatar`;
    None otherwise (the page shows initials)."""
    for value in ((card.model_extra or {}).get("avatar"), card.data.extensions.get("avatar")):
        if isinstance(value, str) and _AVATAR.match(value):
            return value
    return None


def initials(name: str) -> str:
    return "".join(word[0] for word in name.split()[:2]).upper() or "?"


class Characters:
    """Model id → card, the default character first; ids that would collide get a number (`orla-2`)."""

    def __init__(self, cards: Iterable[CharacterCard], user_name: str):
        self.user_name = user_name
        self.by_id: dict[str, CharacterCard] = {}
        for card in cards:
            base = slug(card.name)
            model_id, n = base, 1
            while model_id in self.by_id:
                n += 1
                model_id = f"{base}-{n}"
            self.by_id[model_id] = card

    @property
    def default_id(self) -> str:
        return next(iter(self.by_id))

    def find(self, model: str | None) -> tuple[str, CharacterCard]:
        """The character a request's `model` names: its id or its name (any case); none named: the default."""
        if not model or not model.strip():
            return self.default_id, self.by_id[self.default_id]
        wanted = model.strip()
        for model_id, card in self.by_id.items():
            if wanted.casefold() in (model_id, card.name.casefold()):
                return model_id, card
        raise ApiError(404, f"no character '{wanted}' here; the models are: {', '.join(self.by_id)}",
                       code="model_not_found", param="model")

    def describe(self, model_id: str) -> dict[str, Any]:
        """What the page shows: name, avatar or initials, greeting and card, with {{char}} and {{user}} filled
        in as the model is shown them."""
        card = self.by_id[model_id]
        shown = {field: substitute(getattr(card.data, field), card.name, self.user_name) for field in CARD_FIELDS}
        examples = ("\n".join(f"{t.speaker}: {t.text}" for t in block) for block in example_dialogues(card))
        shown["mes_example"] = substitute("\n\n".join(examples), card.name, self.user_name)
        return {
            "id": model_id, "name": card.name, "avatar": avatar(card), "initials": initials(card.name),
            "greeting": render(card, self.user_name).greeting, "card": {**shown, "tags": card.data.tags},
        }
