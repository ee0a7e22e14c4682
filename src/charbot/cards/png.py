"""Cards inside PNG/APNG images: base64 JSON in `tEXt` chunks, `chara` (V2) and `ccv3` (V3).

Read as SillyTavern reads them (`ccv3` preferred when both are there) and written as it writes them: any old
card chunks removed, then `chara` and `ccv3` inserted just before `IEND`. Chunks are walked by hand, each CRC
checked, so a damaged or truncated file is a one-line error rather than a half-read card.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import zlib
from collections.abc import Iterator

from charbot.errors import PersonaError
from charbot.persona import CharacterCard, parse_card

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CARD_CHUNKS = ("ccv3", "chara")  # in order of preference
MAX_TEXT_CHUNK = 8_000_000


def chunks(data: bytes, source: str) -> Iterator[tuple[bytes, bytes]]:
    """(type, payload) of every chunk up to and including IEND."""
    if not data.startswith(SIGNATURE):
        raise PersonaError(f"{source}: not a PNG file", "pass a PNG card, a CHARX archive or a card .json file")
    pos = len(SIGNATURE)
    while True:
        if pos + 8 > len(data):
            raise PersonaError(f"{source}: truncated PNG (ends at byte {len(data)} without an IEND chunk)", "download or export the card again")
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise PersonaError(f"{source}: truncated PNG (a {kind!r} chunk runs past the end of the file)", "download or export the card again")
        payload = data[pos + 8 : pos + 8 + length]
        if zlib.crc32(kind + payload) != struct.unpack(">I", data[end - 4 : end])[0]:
            raise PersonaError(f"{source}: damaged PNG (bad CRC in the {kind.decode('latin-1')!r} chunk at byte {pos})", "download or export the card again")
        yield kind, payload
        if kind == b"IEND":
            return
        pos = end


def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def card_texts(data: bytes, source: str) -> dict[str, bytes]:
    """The card chunks' texts by lower-case keyword (the first of each)."""
    found: dict[str, bytes] = {}
    for kind, payload in chunks(data, source):
        if kind == b"tEXt":
            keyword, _, text = payload.partition(b"\0")
            name = keyword.decode("latin-1").lower()
            if name in CARD_CHUNKS and name not in found:
                found[name] = text
    return found


def read(data: bytes, source: str) -> tuple[CharacterCard, tuple[str, ...]]:
    """The card in a PNG (the `ccv3` chunk when there is one) and the card chunks found."""
    texts = card_texts(data, source)
    name = next((n for n in CARD_CHUNKS if n in texts), None)
    if name is None:
        raise PersonaError(f"{source}: a PNG without a character card (no 'chara' or 'ccv3' text chunk)",
                           "pass a card exported as PNG by SillyTavern, chub or RisuAI, or the card's .json")
    text = texts[name]
    if len(text) > MAX_TEXT_CHUNK:
        raise PersonaError(f"{source}: the '{name}' chunk is {len(text)} bytes, too big for a card", f"keep the card under {MAX_TEXT_CHUNK} bytes")
    where = f"{source} ({name} chunk)"
    try:
        raw = json.loads(base64.b64decode(b"".join(text.split()), validate=True).decode("utf-8-sig"))
    except (binascii.Error, ValueError) as exc:
        what = "not valid base64" if isinstance(exc, binascii.Error) else "not UTF-8 JSON" if isinstance(exc, UnicodeDecodeError) else f"invalid JSON ({exc})"
        raise PersonaError(f"{where}: {what}", "export the card again; the chunk holds base64 of the card JSON") from None
    except RecursionError:
        raise PersonaError(f"{where}: JSON nested too deeply", "export the card again") from None
    return parse_card(raw, where), tuple(n for n in ("chara", "ccv3") if n in texts)


def _encoded(card: CharacterCard) -> bytes:
    text = json.dumps(card.model_dump(mode="json"), ensure_ascii=False, separators=(",", ":"))
    return base64.b64encode(text.encode("utf-8"))


def write(card: CharacterCard, image: bytes, source: str = "image") -> bytes:
    """`image` (a PNG) with `card` embedded: a V2 `chara` chunk and a V3 `ccv3` chunk before IEND."""
    out = [SIGNATURE]
    for kind, payload in chunks(image, source):
        if kind == b"tEXt" and payload.partition(b"\0")[0].decode("latin-1").lower() in CARD_CHUNKS:
            continue
        if kind == b"IEND":
            out.append(chunk(b"tEXt", b"chara\0" + _encoded(card.as_spec(2))))
            out.append(chunk(b"tEXt", b"ccv3\0" + _encoded(card.as_spec(3))))
        out.append(chunk(kind, payload))
    return b"".join(out)
