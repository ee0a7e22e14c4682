"""CHARX archives: a zip with the V3 card as `card.json` at its root and its assets under `assets/`.

Sizes are checked from the zip's directory before anything is decompressed: the number of members and the
total they unpack to are capped (a zip bomb is refused before it can fill memory), and nothing is ever
written to disk, so member names cannot escape anywhere.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib

from charbot.errors import PersonaError
from charbot.persona import MAX_CARD_BYTES, Asset, CharacterCard, parse_card

MAX_MEMBERS = 512
MAX_UNPACKED = 128_000_000
CARD_JSON = "card.json"
ICON_PATH = "assets/icon/images/main.png"
EMBEDDED = ("embeded://", "embedded://")  # the spec's spelling, and the one people type


def read(data: bytes, source: str) -> tuple[CharacterCard, dict[str, bytes]]:
    """The card and every other member (path → bytes), for writing the archive back out."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError, OverflowError) as exc:
        raise PersonaError(f"{source}: not a readable CHARX/zip archive ({exc})", "export the card again") from None
    if len(members) > MAX_MEMBERS:
        raise PersonaError(f"{source}: {len(members)} files in the archive (the most is {MAX_MEMBERS})", "a CHARX holds a card and its assets; remove the rest")
    unpacked = sum(m.file_size for m in members)
    if unpacked > MAX_UNPACKED:
        raise PersonaError(f"{source}: the archive would unpack to {unpacked:,} bytes (the most is {MAX_UNPACKED:,})", "shrink its assets")
    if any(m.flag_bits & 0x1 for m in members):
        raise PersonaError(f"{source}: encrypted archive", "export the CHARX without a password")
    card_info = next((m for m in members if m.filename == CARD_JSON), None)
    if card_info is None:
        raise PersonaError(f"{source}: a CHARX without card.json at its root", "a CHARX is a zip with the V3 card as card.json; export it again")
    if card_info.file_size > MAX_CARD_BYTES:
        raise PersonaError(f"{source}: card.json is {card_info.file_size:,} bytes, too big for a card", f"keep it under {MAX_CARD_BYTES:,} bytes")
    try:
        raw = json.loads(archive.read(card_info).decode("utf-8-sig"))
        others = {m.filename: archive.read(m) for m in members if m is not card_info and not m.is_dir()}
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OverflowError, RuntimeError) as exc:
        raise PersonaError(f"{source}: damaged archive ({exc})", "export the card again") from None
    except ValueError as exc:
        raise PersonaError(f"{source} (card.json): not UTF-8 JSON ({exc})", "fix card.json inside the archive") from None
    except RecursionError:
        raise PersonaError(f"{source} (card.json): JSON nested too deeply", "fix card.json inside the archive") from None
    return parse_card(raw, f"{source} (card.json)"), others


def embedded_path(uri: str) -> str | None:
    for prefix in EMBEDDED:
        if uri.startswith(prefix):
            return uri[len(prefix) :]
    return None


def main_icon(card: CharacterCard) -> Asset | None:
    icons = [a for a in card.data.assets or [] if a.type == "icon"]
    return next((a for a in icons if a.name == "main"), icons[0] if icons else None)


def write(card: CharacterCard, image: bytes | None, assets: dict[str, bytes]) -> bytes:
    """A CHARX: the card (V3) as card.json, `assets` as they were, and `image` as the main icon when the card
    has no embedded one."""
    members = dict(assets)
    icon = main_icon(card)
    if image is not None and (icon is None or embedded_path(icon.uri) not in members):
        members[ICON_PATH] = image
        entry = Asset(type="icon", uri=EMBEDDED[0] + ICON_PATH, name="main", ext="png")
        kept = [a for a in card.data.assets or [] if a is not icon]
        card = card.model_copy(update={"data": card.data.model_copy(update={"assets": [entry, *kept]})})
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(CARD_JSON, json.dumps(card.as_spec(3).model_dump(mode="json"), ensure_ascii=False, indent=2))
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()
