"""Character Card V2 (spec `chara_card_v2`) personas: load, validate, save, and render into prompt text.

V1 cards (the same fields at top level) are accepted and upgraded on load.
Spec: https://github.com/malfoyslastname/character-card-spec-v2
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from charbot.errors import PersonaError

MAX_CARD_BYTES = 2_000_000  # real cards are a few KB; anything larger is a mistake or an attack
_START = re.compile(r"^\s*<START>\s*$", re.MULTILINE | re.IGNORECASE)


class CardData(BaseModel):
    model_config = ConfigDict(extra="allow")

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


class CharacterCard(BaseModel):
    model_config = ConfigDict(extra="allow")

    spec: str = "chara_card_v2"
    spec_version: str = "2.0"
    data: CardData

    @property
    def name(self) -> str:
        return self.data.name

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), ensure_ascii=False, indent=2) + "\n"


@dataclass(frozen=True)
class ExampleTurn:
    speaker: str  # "{{char}}" or "{{user}}" or another name, before substitution
    text: str


def parse_card(raw: Any, source: str = "<card>") -> CharacterCard:
    if not isinstance(raw, dict):
        raise PersonaError(f"{source}: a character card must be a JSON object", "see the Character Card V2 spec")
    try:
        if raw.get("spec") == "chara_card_v2" or "data" in raw:
            if raw.get("spec") not in (None, "chara_card_v2"):
                raise PersonaError(f"{source}: unsupported card spec {raw.get('spec')!r}", "use chara_card_v2 or a V1 card")
            return CharacterCard.model_validate(raw)
        return CharacterCard(data=CardData.model_validate(raw))  # V1: fields at top level
    except RecursionError:
        raise PersonaError(f"{source}: nested too deeply", "a character card is a flat object of text fields") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise PersonaError(f"{source}: field '{where}': {err['msg']}", "fix the card JSON (Character Card V2)") from None


def load_card(path: str | Path) -> CharacterCard:
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise PersonaError(f"{path}: not a file", "pass the path of a character card .json file")
        if size > MAX_CARD_BYTES:
            raise PersonaError(f"{path}: {size} bytes is too big for a character card", f"keep it under {MAX_CARD_BYTES} bytes")
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise PersonaError(f"{path}: no such persona card", "check the path, or run `charbot prepare` to make one") from None
    except PermissionError:
        raise PersonaError(f"{path}: permission denied", "make the file readable") from None
    except OSError as exc:  # a symlink loop, a name too long, an I/O error
        raise PersonaError(f"{path}: cannot read ({exc.strerror or exc})", "pass a regular, readable card .json file") from None
    except UnicodeDecodeError as exc:
        raise PersonaError(f"{path}: not UTF-8 text (byte {exc.start})", "save the card as UTF-8 JSON") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PersonaError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg})", "fix the card JSON") from None
    except RecursionError:
        raise PersonaError(f"{path}: JSON nested too deeply", "a character card is a flat object of text fields") from None
    return parse_card(raw, str(path))


def save_card(card: CharacterCard, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(card.to_json(), encoding="utf-8")
    tmp.replace(path)  # never leave a half-written card behind
    return path


def substitute(text: str, char: str, user: str) -> str:
    return re.sub(r"\{\{char\}\}|<BOT>", char, re.sub(r"\{\{user\}\}|<USER>", user, text, flags=re.I), flags=re.I)


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
    """The persona as prompt text: `system` always goes in; `examples` is dropped first when space is short."""

    char: str
    system: str
    examples: str
    post_history: str
    greeting: str = ""  # first_mes: opens the conversation, as in SillyTavern


def render(card: CharacterCard, user: str) -> RenderedPersona:
    d = card.data
    char = d.name
    parts = []
    default = f"You are {char}. Stay in character and answer as {char} would, in one or two short sentences."
    if d.system_prompt.strip():
        parts.append(d.system_prompt.replace("{{original}}", default))
    else:
        parts.append(default)
    if d.description.strip():
        parts.append(d.description.strip())
    if d.personality.strip():
        parts.append(f"{char}'s personality: {d.personality.strip()}")
    if d.scenario.strip():
        parts.append(f"Scenario: {d.scenario.strip()}")
    system = substitute("\n".join(parts), char, user)
    lines = []
    for block in example_dialogues(card):
        lines.extend(f"{substitute(t.speaker, char, user)}: {substitute(t.text, char, user)}" for t in block)
        lines.append("")
    examples = ""
    if lines:
        examples = "Example of how " + char + " talks:\n" + "\n".join(lines).strip()
    return RenderedPersona(
        char, system, examples, substitute(d.post_history_instructions, char, user).strip(), substitute(d.first_mes, char, user).strip()
    )
