"""Character card files: JSON (V1/V2/V3), PNG/APNG with `chara`/`ccv3` text chunks, and CHARX archives."""

from charbot.cards.files import MAX_FILE_BYTES, WRITERS, CardFile, parse_card_bytes, read_card_file, write_card_file

from pathlib import Path

CARD_SUFFIXES = (".json", ".png", ".apng", ".charx")


def find_card(directory: Path, stem: str = "persona") -> Path | None:
    """`persona.json`, `persona.png`, … in `directory`: the first there is."""
    return next((p for s in CARD_SUFFIXES if (p := Path(directory) / f"{stem}{s}").is_file()), None)


__all__ = ["CARD_SUFFIXES", "find_card", "MAX_FILE_BYTES", "WRITERS", "CardFile", "parse_card_bytes", "read_card_file", "write_card_file"]
