"""Card files built by hand for the tests, the way the tools people use write them: PNG images chunk by chunk
(zlib + CRC32) with base64 card JSON in `tEXt` chunks placed as SillyTavern places them, APNG, CHARX zips,
lorebook_v3 files and SillyTavern world-info exports. Nothing here uses charbot's own writers.

The character is original: Wren Alder, keeper of lock nine on the Fenmoor Cut.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import struct
import zipfile
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_image(width: int = 3, height: int = 2, rgb: tuple[int, int, int] = (40, 110, 90), extra: list[bytes] = ()) -> bytes:
    """A truecolour PNG: IHDR, any `extra` chunks, one IDAT (filter 0 rows), IEND."""
    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return SIGNATURE + chunk(b"IHDR", ihdr) + b"".join(extra) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def apng_image(frames: int = 2) -> bytes:
    """An animated PNG: acTL, then fcTL + IDAT for the first frame and fcTL + fdAT for the others."""
    width, height = 2, 2
    rows = zlib.compress(b"".join(b"\x00" + b"\x10\x20\x30" * width for _ in range(height)))

    def fctl(seq: int) -> bytes:
        return chunk(b"fcTL", struct.pack(">IIIIIHHBB", seq, width, height, 0, 0, 1, 10, 0, 0))

    out = SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"acTL", struct.pack(">II", frames, 0))
    out += fctl(0) + chunk(b"IDAT", rows)
    for i in range(1, frames):
        out += fctl(2 * i - 1) + chunk(b"fdAT", struct.pack(">I", 2 * i) + rows)
    return out + chunk(b"IEND", b"")


def text_chunk(keyword: str, text: bytes) -> bytes:
    return chunk(b"tEXt", keyword.encode("latin-1") + b"\0" + text)


def b64json(obj) -> bytes:
    return base64.b64encode(json.dumps(obj).encode("utf-8"))


def with_card_chunks(image: bytes, chara: dict | None = None, ccv3: dict | None = None, raw: dict[str, bytes] | None = None) -> bytes:
    """`image` with its old card chunks removed and the new ones just before IEND, as SillyTavern's write() does."""
    chunks, pos = [], len(SIGNATURE)
    while pos < len(image):
        length, kind = struct.unpack(">I4s", image[pos : pos + 8])
        whole = image[pos : pos + 12 + length]
        keyword = image[pos + 8 : pos + 8 + length].partition(b"\0")[0].lower()
        if not (kind == b"tEXt" and keyword in (b"chara", b"ccv3")):
            chunks.append((kind, whole))
        pos += 12 + length
    new = [text_chunk(k, v) for k, v in (raw or {}).items()]
    new += [text_chunk("chara", b64json(chara))] if chara is not None else []
    new += [text_chunk("ccv3", b64json(ccv3))] if ccv3 is not None else []
    return SIGNATURE + b"".join(w for k, w in chunks if k != b"IEND") + b"".join(new) + chunk(b"IEND", b"")


def read_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk, CRCs checked: the tests' own reader, to check what charbot writes."""
    assert data.startswith(SIGNATURE)
    out, pos = [], len(SIGNATURE)
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        payload = data[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(kind + payload), kind
        out.append((kind, payload))
        pos += 12 + length
    return out


def card_texts(data: bytes) -> dict[str, dict]:
    """The card chunks' JSON by keyword."""
    texts = {p.partition(b"\0")[0].decode(): p.partition(b"\0")[2] for k, p in read_chunks(data) if k == b"tEXt"}
    return {k: json.loads(base64.b64decode(v)) for k, v in texts.items() if k in ("chara", "ccv3")}


def charx(card: dict | None, assets: dict[str, bytes] = (), members: dict[str, bytes] = ()) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        if card is not None:
            z.writestr("card.json", json.dumps(card))
        for name, data in {**dict(assets), **dict(members)}.items():
            z.writestr(name, data)
    return out.getvalue()


BOOK_V2 = {
    "name": "The Fenmoor Cut",
    "scan_depth": 2,
    "extensions": {"x_editor": {"folded": True}},
    "entries": [
        {"keys": ["Heron", "the narrowboat"], "content": "The Heron is {{char}}'s narrowboat: green paint, a stove that leaks smoke.",
         "extensions": {}, "enabled": True, "insertion_order": 10, "id": 0, "comment": "the boat", "position": "after_char", "x_note": "kept"},
        {"keys": ["tolls"], "secondary_keys": ["winter"], "selective": True, "content": "In winter the tolls double and nobody pays them.",
         "extensions": {}, "enabled": True, "insertion_order": 20, "id": 1, "position": "before_char"},
        {"keys": [], "constant": True, "content": "Lock nine is the deepest lock on the Cut.", "extensions": {}, "enabled": True,
         "insertion_order": 5, "id": 2, "position": "before_char"},
        {"keys": ["eel"], "content": "@@depth 1\nEels are bad luck on the Cut; never say the word at the gates.", "extensions": {},
         "enabled": True, "insertion_order": 30, "id": 3},
        {"keys": ["ghost"], "content": "The ghost of lock nine is only a story.", "extensions": {}, "enabled": False, "insertion_order": 40, "id": 4},
    ],
}


def wren(spec: int = 2, book: dict | None = BOOK_V2, **changes) -> dict:
    data = {
        "name": "Wren", "description": "Wren Alder, keeper of lock nine on the Fenmoor Cut, forty, patient, weather-beaten.",
        "personality": "dry, unhurried, kind to animals, suspicious of motorboats", "scenario": "{{user}} is waiting at the lock gates.",
        "first_mes": "Tie up on the left, the right bollard's loose.", "mes_example": "<START>\n{{user}}: Busy day?\n{{char}}: Three boats and a swan. Busy enough.",
        "creator_notes": "original test character", "system_prompt": "", "post_history_instructions": "",
        "alternate_greetings": ["Back again? The gates remember you."], "tags": ["test"], "creator": "tests", "character_version": "1",
        "extensions": {"world": "fenmoor", "depth_prompt": {"prompt": "Wren is tired.", "depth": 4}},
        **changes,
    }
    if book is not None:
        data["character_book"] = copy.deepcopy(book)
    if spec == 3:
        data.update(group_only_greetings=[], nickname="Wren", creation_date=1700000000,
                    assets=[{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}])
        return {"spec": "chara_card_v3", "spec_version": "3.0", "data": data}
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": data}


def world_info() -> dict:
    """A SillyTavern world-info export (entries keyed by uid) with what its editor writes."""
    base = {"keysecondary": [], "comment": "", "constant": False, "selective": True, "selectiveLogic": 0, "addMemo": True, "order": 100,
            "position": 0, "disable": False, "excludeRecursion": False, "probability": 100, "useProbability": True, "depth": 4,
            "group": "", "scanDepth": None, "caseSensitive": None, "matchWholeWords": None, "role": None, "vectorized": False}
    entries = [
        {"key": ["sluice"], "content": "The sluice at lock nine sticks in frost.", "order": 50, "position": 1},
        {"key": ["Pike"], "keysecondary": ["bridge", "inn"], "selectiveLogic": 2, "content": "Old Pike fishes alone, far from the inn.", "order": 40},
        {"key": ["flood"], "content": "The Cut flooded in the spring of the long rain.", "order": 30, "position": 4, "depth": 2, "role": 1},
        {"key": ["/gate ?keys?/i"], "content": "The gate key hangs on a nail in the lock cottage.", "order": 20, "position": 1},
        {"key": ["Mill"], "content": "The Mill is a pub now.", "caseSensitive": True, "order": 10, "position": 1},
    ]
    return {"entries": {str(i): {"uid": i, **base, **e} for i, e in enumerate(entries)}, "name": "fenmoor-world"}
