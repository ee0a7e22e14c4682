"""Read a card from any file (JSON, PNG/APNG, CHARX: told apart by content, not by name) and write one in the
format its name asks for."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from charbot.cards import charx, png
from charbot.cards.avatar import as_png, avatar_png
from charbot.errors import PersonaError
from charbot.lorebook import parse_json
from charbot.persona import MAX_CARD_BYTES, CharacterCard, parse_card

MAX_FILE_BYTES = 64_000_000  # a PNG card is its picture plus a few KB of text; a CHARX carries assets
WRITERS = (".json", ".png", ".charx")


@dataclass
class CardFile:
    card: CharacterCard
    format: str  # "json", "png" or "charx"
    image: bytes | None = None  # the card's picture: the PNG itself, or a CHARX's main icon
    assets: dict[str, bytes] = field(default_factory=dict)  # a CHARX's other members, kept for writing back
    chunks: tuple[str, ...] = ()  # a PNG's card chunks ("chara", "ccv3")


def _read_bytes(path: Path) -> bytes:
    try:
        if not path.is_file():
            if not path.exists():
                raise PersonaError(f"{path}: no such persona card", "check the path, or run `charbot prepare` to make one")
            raise PersonaError(f"{path}: not a file", "pass the path of a character card (.json, .png or .charx)")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise PersonaError(f"{path}: {size} bytes is too big for a character card", f"keep it under {MAX_FILE_BYTES} bytes")
        return path.read_bytes()
    except PermissionError:
        raise PersonaError(f"{path}: permission denied", "make the file readable") from None
    except OSError as exc:  # a symlink loop, a name too long, an I/O error
        raise PersonaError(f"{path}: cannot read ({exc.strerror or exc})", "pass a regular, readable card file") from None


def parse_card_bytes(data: bytes, source: str) -> CardFile:
    if data.startswith(png.SIGNATURE):
        card, chunks = png.read(data, source)
        return CardFile(card, "png", image=data, chunks=chunks)
    if data.startswith(b"PK\x03\x04"):
        card, members = charx.read(data, source)
        icon = charx.main_icon(card)
        path = charx.embedded_path(icon.uri) if icon else None
        return CardFile(card, "charx", image=members.get(path) if path else None, assets=members)
    if len(data) > MAX_CARD_BYTES:
        raise PersonaError(f"{source}: {len(data)} bytes is too big for a character card", f"keep it under {MAX_CARD_BYTES} bytes")
    return CardFile(parse_card(parse_json(data, source, "character card", ", or pass a PNG/CHARX card"), source), "json")


def read_card_file(path: str | Path) -> CardFile:
    path = Path(path)
    return parse_card_bytes(_read_bytes(path), str(path))


def write_card_file(card_file: CardFile, path: str | Path) -> list[str]:
    """Write the card as `path`'s extension says (.json V3, .png with chara+ccv3, .charx); returns warnings."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITERS:
        raise PersonaError(f"{path}: unknown card format {suffix or '(no extension)'!r}", "name the output .json, .png or .charx")
    card, warnings = card_file.card, []
    embedded = {p for a in card.data.assets or [] if (p := charx.embedded_path(a.uri))}
    if suffix == ".charx":
        data = charx.write(card, _picture(card_file, warnings), card_file.assets)
    elif suffix == ".png":
        data = png.write(_png_card(card, embedded), _picture(card_file, warnings) or avatar_png(card.name))
        if embedded:
            warnings.append(f"{len(embedded)} embedded asset(s) are not carried into a PNG (the icon is its picture); use .charx to keep them")
    else:
        data = card.as_spec(3).to_json().encode("utf-8")
        if embedded:
            warnings.append(f"{len(embedded)} embedded asset(s) are not carried into a JSON card; use .charx to keep them")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)  # never leave a half-written card behind
    return warnings


def _picture(card_file: CardFile, warnings: list[str]) -> bytes | None:
    if card_file.image is None:
        return None
    picture = as_png(card_file.image)
    if picture is None:
        warnings.append("the card's icon is not an image this charbot can read; a generated avatar is used instead")
    return picture


def _png_card(card: CharacterCard, embedded: set[str]) -> CharacterCard:
    """In a PNG the main icon is the PNG itself (`ccdefault:`); other embedded assets cannot come along."""
    if not card.data.assets:
        return card
    icon = charx.main_icon(card)
    assets = [a.model_copy(update={"uri": "ccdefault:"}) if a is icon else a for a in card.data.assets if a is icon or charx.embedded_path(a.uri) is None]
    return card.model_copy(update={"data": card.data.model_copy(update={"assets": assets})})
