"""Lorebooks (world info): entries that enter the prompt only when their keys come up in the conversation.

Read from a card's `character_book` (Character Card V2/V3), a standalone `lorebook_v3` file
(`{"spec": "lorebook_v3", "data": {...}}`), or SillyTavern's world-info export (`{"entries": {"0": {...}}}`),
which is converted field for field the way SillyTavern converts it into a card's book. Unknown fields and
extensions are kept, so a book written back out loses nothing. Matching lives in lore_scan.py.

Specs: https://github.com/kwaroran/character-card-spec-v3 (Lorebook), character-card-spec-v2 (character_book).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_serializer

from charbot.errors import PersonaError

MAX_ENTRIES = 1000  # big community world books have a few hundred; thousands is a mistake or an attack
MAX_KEYS = 100
MAX_LOREBOOK_BYTES = 5_000_000
Key = Annotated[str, Field(max_length=1000)]


class Lossless(BaseModel):
    """Unknown fields are kept; an optional field that was absent on input stays absent on output."""

    model_config = ConfigDict(extra="allow")

    @model_serializer(mode="wrap")
    def _drop_absent(self, handler):
        out = handler(self)
        for name in type(self).model_fields:
            if out.get(name, 0) is None and name not in self.model_fields_set:
                del out[name]
        return out


class LoreEntry(Lossless):
    keys: list[Key] = Field(default_factory=list, max_length=MAX_KEYS)
    content: str = ""
    extensions: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True
    insertion_order: int | float = 100
    case_sensitive: bool | None = None
    use_regex: bool = False
    constant: bool | None = None
    name: str | None = None
    priority: int | float | None = None
    id: int | str | None = None
    comment: str | None = None
    selective: bool | None = None
    secondary_keys: list[Key] | None = Field(None, max_length=MAX_KEYS)
    position: str | None = None  # "before_char" | "after_char"

    @property
    def label(self) -> str:
        return self.comment or self.name or (self.keys[0] if self.keys else "") or "(unnamed)"


class Lorebook(Lossless):
    name: str | None = None
    description: str | None = None
    scan_depth: int | None = Field(None, ge=0, le=1000)
    token_budget: int | None = Field(None, ge=0)
    recursive_scanning: bool | None = None
    extensions: dict[str, Any] = Field(default_factory=dict)
    entries: list[LoreEntry] = Field(default_factory=list, max_length=MAX_ENTRIES)
    _rules: Any = PrivateAttr(default=None)  # the scanner's compiled entries (lore_scan.py), made on first use


def describe_error(exc: ValidationError, prefix: str = "") -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in (*([prefix] if prefix else []), *err["loc"]))
    if err["type"] == "too_long":
        return f"field '{where}' has too many items (the most is {err.get('ctx', {}).get('max_length')})"
    return f"field '{where}': {err['msg']}"


def parse_lorebook(raw: Any, source: str) -> Lorebook:
    """A lorebook from parsed JSON in any of the three shapes; one-line PersonaError otherwise."""
    fix = "use a lorebook_v3 JSON file or a SillyTavern world-info export"
    if not isinstance(raw, dict):
        raise PersonaError(f"{source}: a lorebook must be a JSON object", fix)
    if "spec" in raw:
        if raw["spec"] != "lorebook_v3":
            if str(raw["spec"]).startswith("chara_card"):
                raise PersonaError(f"{source}: is a character card, not a lorebook", "pass it as the persona: its own book is used")
            raise PersonaError(f"{source}: unsupported lorebook spec {raw['spec']!r}", fix)
        raw, prefix = raw.get("data"), "data"
    else:
        prefix = ""
    if not isinstance(raw, dict):
        raise PersonaError(f"{source}: 'data' must be a JSON object", fix)
    entries = raw.get("entries")
    if isinstance(entries, dict):  # SillyTavern world info: entries keyed by uid
        raw = from_world_info(raw, source)
    elif not isinstance(entries, list):
        raise PersonaError(f"{source}: no 'entries' list or object", fix)
    if len(raw["entries"]) > MAX_ENTRIES:
        raise PersonaError(f"{source}: {len(raw['entries'])} entries (the most is {MAX_ENTRIES})", "split the lorebook or remove unused entries")
    try:
        return Lorebook.model_validate(raw)
    except ValidationError as exc:
        raise PersonaError(f"{source}: {describe_error(exc, prefix)}", fix) from None
    except RecursionError:
        raise PersonaError(f"{source}: nested too deeply", fix) from None


def parse_json(data: bytes, source: str, kind: str, fix: str) -> Any:
    """JSON text (UTF-8, a BOM allowed) → Python, or a one-line PersonaError naming `source`."""
    try:
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise PersonaError(f"{source}: not UTF-8 text (byte {exc.start})", f"save the {kind} as UTF-8 JSON{fix}") from None
    except json.JSONDecodeError as exc:
        raise PersonaError(f"{source}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg})", f"fix the {kind} JSON") from None
    except RecursionError:
        raise PersonaError(f"{source}: JSON nested too deeply", f"a {kind} is a flat object of text fields") from None


def load_lorebook(path: str | Path) -> Lorebook:
    path = Path(path).expanduser()
    try:
        if not path.is_file():
            raise PersonaError(f"{path}: no such lorebook file", "check the path (setting 'lorebook', --lorebook)")
        if path.stat().st_size > MAX_LOREBOOK_BYTES:
            raise PersonaError(f"{path}: {path.stat().st_size} bytes is too big for a lorebook", f"keep it under {MAX_LOREBOOK_BYTES} bytes")
        data = path.read_bytes()
    except OSError as exc:
        raise PersonaError(f"{path}: cannot read ({exc.strerror or exc})", "pass a readable lorebook .json file") from None
    return parse_lorebook(parse_json(data, str(path), "lorebook", ""), str(path))


# SillyTavern world-info entry field → its name in a card book's `extensions` (SillyTavern's own mapping).
_WI_EXTENSIONS = {
    "position": "position", "excludeRecursion": "exclude_recursion", "preventRecursion": "prevent_recursion",
    "delayUntilRecursion": "delay_until_recursion", "displayIndex": "display_index", "probability": "probability",
    "useProbability": "useProbability", "depth": "depth", "selectiveLogic": "selectiveLogic", "outletName": "outlet_name",
    "group": "group", "groupOverride": "group_override", "groupWeight": "group_weight", "scanDepth": "scan_depth",
    "caseSensitive": "case_sensitive", "matchWholeWords": "match_whole_words", "useGroupScoring": "use_group_scoring",
    "automationId": "automation_id", "role": "role", "vectorized": "vectorized", "sticky": "sticky", "cooldown": "cooldown",
    "delay": "delay", "ignoreBudget": "ignore_budget", "triggers": "triggers",
}
_WI_FIELDS = {"uid", "key", "keysecondary", "comment", "content", "constant", "selective", "order", "disable", "extensions"}


def from_world_info(raw: dict, source: str) -> dict:
    """SillyTavern's world-info export as a card book (`entries` list), every field kept."""
    entries = []
    for uid, e in raw["entries"].items():
        if not isinstance(e, dict):
            raise PersonaError(f"{source}: entry {uid} is not an object", "fix the world-info JSON")
        extensions = {**(e.get("extensions") if isinstance(e.get("extensions"), dict) else {})}
        for field, value in e.items():
            if field not in _WI_FIELDS:
                extensions[_WI_EXTENSIONS.get(field, field)] = value
        position = e.get("position", 0)
        entries.append({
            "id": e.get("uid", uid), "keys": e.get("key", []), "secondary_keys": e.get("keysecondary", []),
            "comment": e.get("comment", ""), "content": e.get("content", ""), "constant": e.get("constant", False),
            "selective": e.get("selective", True), "insertion_order": e.get("order", 100), "enabled": not e.get("disable", False),
            "position": "before_char" if position == 0 else "after_char", "use_regex": False, "extensions": extensions,
        })
    book = {k: v for k, v in raw.items() if k not in ("entries", "originalData")}
    return {**book, "entries": entries}
