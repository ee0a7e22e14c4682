"""Character cards: the model (Character Card V1, V2 `chara_card_v2` and V3 `chara_card_v3`, with the
character's lorebook), validation, JSON save, and rendering into prompt text. File formats (PNG, CHARX) are
in cards/; `load_card` reads any of them.

V1 cards (the same fields at top level) are upgraded to V2 on load. A V3 card keeps using the V2 fields
(system_prompt, first_mes, …) as SillyTavern and RisuAI do. Unknown fields and extensions are kept.
Specs: https://github.com/malfoyslastname/character-card-spec-v2, https://github.com/kwaroran/character-card-spec-v3
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from charbot.errors import PersonaError
from charbot.lorebook import Lorebook, Lossless, describe_error

MAX_CARD_BYTES = 2_000_000  # real cards are a few KB; anything larger is a mistake or an attack
SPECS = {"chara_card_v2": 2, "chara_card_v3": 3}
_START = re.compile(r"^\s*<START>\s*$", re.MULTILINE | re.IGNORECASE)
CARD_FIX = "fix the card JSON (Character Card V2 or V3)"


class Asset(Lossless):
    type: str
    uri: str
    name: str = ""
    ext: str = ""


class CardData(Lossless):
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    personality: str = ""
    scenario: str = ""
    first_mes: str = ""
    mes_example: str = ""
    creator_notes: str = ""
    system_prompt: str = ""
    post_history_instructions: str = ""
    alternate_greetings: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    creator: str = ""
    character_version: str = ""
    extensions: dict[str, Any] = Field(default_factory=dict)
    character_book: Lorebook | None = None
    # V3
    nickname: str | None = None
    assets: list[Asset] | None = None
    group_only_greetings: list[str] | None = None


class CharacterCard(Lossless):
    spec: str = "chara_card_v2"
    spec_version: str = "2.0"
    data: CardData

    @property
    def name(self) -> str:
        return self.data.name

    @property
    def book(self) -> Lorebook | None:
        return self.data.character_book

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), ensure_ascii=False, indent=2) + "\n"

    def as_spec(self, version: int) -> CharacterCard:
        """The same card labelled V2 or V3 (V3 needs `group_only_greetings`); every other field is kept."""
        if version == 3:
            data = self.data if self.data.group_only_greetings is not None else self.data.model_copy(update={"group_only_greetings": []})
            return self.model_copy(update={"spec": "chara_card_v3", "spec_version": "3.0", "data": data})
        return self.model_copy(update={"spec": "chara_card_v2", "spec_version": "2.0"})


@dataclass(frozen=True)
class ExampleTurn:
    speaker: str  # "{{char}}" or "{{user}}" or another name, before substitution
    text: str


def _spec_of(raw: dict, source: str) -> int:
    spec = raw.get("spec", "chara_card_v2")
    if not isinstance(spec, str) or spec not in SPECS:
        raise PersonaError(f"{source}: unsupported card spec {spec!r}", "charbot reads chara_card_v2 and chara_card_v3 cards (and V1 cards)")
    major = SPECS[spec]
    version = str(raw.get("spec_version", f"{major}.0"))
    try:
        ok = major <= float(version) < major + 1
    except ValueError:
        ok = False
    if not ok:
        raise PersonaError(f"{source}: {spec} with spec_version {version!r}, which this charbot does not read",
                           f"re-export the card as {spec} version {major}.0 (or as JSON V2/V3)")
    return major


def parse_card(raw: Any, source: str = "<card>") -> CharacterCard:
    if not isinstance(raw, dict):
        raise PersonaError(f"{source}: a character card must be a JSON object", "see the Character Card V2/V3 spec")
    try:
        if "spec" in raw or "data" in raw:
            _spec_of(raw, source)
            return CharacterCard.model_validate(raw)
        return CharacterCard(data=CardData.model_validate(raw))  # V1: fields at top level
    except RecursionError:
        raise PersonaError(f"{source}: nested too deeply", "a character card is a flat object of text fields") from None
    except ValidationError as exc:
        raise PersonaError(f"{source}: {describe_error(exc)}", CARD_FIX) from None


def load_card(path: str | Path) -> CharacterCard:
    """A card from a JSON, PNG/APNG or CHARX file (any of them, whatever the extension says)."""
    from charbot.cards import read_card_file  # the file formats are built on this module's model

    return read_card_file(path).card


def save_card(card: CharacterCard, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(card.to_json(), encoding="utf-8")
    tmp.replace(path)  # never leave a half-written card behind
    return path


_CHAR = re.compile(r"\{\{char\}\}|<BOT>", re.I)
_USER = re.compile(r"\{\{user\}\}|<USER>", re.I)


def substitute(text: str, char: str, user: str) -> str:
    if "{{" not in text and "<" not in text:  # most fields have no macro: every prompt renders the card
        return text
    return _CHAR.sub(lambda _: char, _USER.sub(lambda _: user, text))


def example_dialogues(card: CharacterCard) -> list[list[ExampleTurn]]:
    """`mes_example` split into <START> blocks of `Speaker: text` turns."""
    blocks = []
    for chunk in _START.split(card.data.mes_example):
        turns: list[ExampleTurn] = []
        for line in chunk.strip().splitlines():
            speaker, sep, text = line.partition(":")
            if sep and speaker.strip() and len(speaker) <= 60:
                turns.append(ExampleTurn(speaker.strip(), text.strip()))
            elif turns and line.strip():  # continuation of the previous turn
                last = turns[-1]
                turns[-1] = ExampleTurn(last.speaker, f"{last.text}\n{line.strip()}")
        if turns:
            blocks.append(turns)
    return blocks


@dataclass(frozen=True)
class RenderedPersona:
    """The persona as prompt text: `system` always goes in; `examples` is dropped first when space is short.

    `system` is `head` (the instruction line or the card's system prompt) and `body` (description,
    personality, scenario): lorebook entries go before or after the body, as SillyTavern places them."""

    char: str
    system: str
    examples: str
    post_history: str
    greeting: str = ""  # first_mes: opens the conversation, as in SillyTavern
    head: str = ""
    body: str = ""
    user: str = ""

    def with_lore(self, before: list[str], after: list[str]) -> str:
        if not before and not after:
            return self.system
        head, body = (self.head, self.body) if self.head or self.body else (self.system, "")
        return "\n".join(p for p in (head, *before, body, *after) if p)


def render(card: CharacterCard, user: str) -> RenderedPersona:
    d = card.data
    char = d.nickname or d.name  # V3: {{char}} is the nickname when there is one
    default = f"You are {char}. Stay in character and answer as {char} would, in one or two short sentences."
    head = d.system_prompt.replace("{{original}}", default) if d.system_prompt.strip() else default
    parts = []
    if d.description.strip():
        parts.append(d.description.strip())
    if d.personality.strip():
        parts.append(f"{char}'s personality: {d.personality.strip()}")
    if d.scenario.strip():
        parts.append(f"Scenario: {d.scenario.strip()}")
    head, body = substitute(head, char, user), substitute("\n".join(parts), char, user)
    system = head + (f"\n{body}" if body else "")
    lines = []
    for block in example_dialogues(card):
        lines.extend(f"{substitute(t.speaker, char, user)}: {substitute(t.text, char, user)}" for t in block)
        lines.append("")
    examples = ""
    if lines:
        examples = "Example of how " + char + " talks:\n" + "\n".join(lines).strip()
    return RenderedPersona(
        d.name, system, examples, substitute(d.post_history_instructions, char, user).strip(), substitute(d.first_mes, char, user).strip(),
        head, body, user,
    )
