"""Normalise speaker names and dialogue lines, and say why a row was dropped."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from charbot.prepare.errors import ScriptError
from charbot.prepare.examples import Line
from charbot.prepare.readers import RawRow

try:  # ftfy knows far more mojibake shapes than a hand-written cp1252 round trip
    from ftfy import fix_encoding as _fix_encoding
except ImportError:  # pragma: no cover - ftfy is a dependency of the prepare extra
    _fix_encoding = None

_DIRECTION = re.compile(r"\([^()]*\)|\[[^\[\]]*\]")
_SPACES = re.compile(r"\s+")
_EDGE_PUNCT = "()[]{}<>\"'`*:;,.-_#~|/\\ "
# Bytes that only show up in text that was UTF-8, decoded as cp1252/latin-1, and encoded again.
_MOJIBAKE_HINT = re.compile("[\u00c2\u00c3\u00e2\u00c5\u00d0\u00d1][\u0080-\u00bf\u0152-\u2122]")

DROP_EMPTY_ROW = "empty row"
DROP_NO_SPEAKER = "no speaker"
DROP_NO_LINE = "speaker but no line"
DROP_DIRECTION_ONLY = "stage direction only"


def fix_text(text: str) -> str:
    if text.isascii():
        return text
    if _MOJIBAKE_HINT.search(text):
        if _fix_encoding is not None:
            text = _fix_encoding(text)
        else:
            try:
                text = text.encode("cp1252").decode("utf-8")
            except UnicodeError:
                pass
    return unicodedata.normalize("NFC", text)


def _cap(word: str) -> str:
    return "-".join(p[:1].upper() + p[1:].lower() for p in word.split("-"))


def normalize_speaker(raw: str) -> str:
    """'  FRODO ', '\\xa0GANDALF', '(GOLLUM' -> 'Frodo', 'Gandalf', 'Gollum'. Mixed case is kept as written."""
    name = _SPACES.sub(" ", fix_text(raw)).strip(_EDGE_PUNCT + "\u00a0\u200b\ufeff")
    if not name:
        return ""
    if name == name.upper() and any(c.isalpha() for c in name):
        # ALL-CAPS screenplay names read badly in prompts; "Dr." style dots survive capitalising.
        name = " ".join(_cap(w) for w in name.split(" "))
    return name


def speaker_key(name: str) -> str:
    return normalize_speaker(name).casefold()


def clean_line(raw: str) -> str:
    return _tidy(fix_text(raw))


def _tidy(text: str) -> str:
    if "(" in text or "[" in text:
        text = _DIRECTION.sub(" ", text)
    return " ".join(text.split())


@dataclass(frozen=True)
class Row:
    """What one script row turned out to be: a usable line, or no line and the reason it was dropped."""

    line: Line | None
    dropped: str = ""
    repaired: bool = False  # its mojibake was fixed
    directions: bool = False  # a (stage direction) was taken out of it


def classify(raw: RawRow, speaker: str, episode: str) -> Row:
    """`speaker` is the row's speaker after normalising and aliases; `episode` the one it belongs to."""
    if not speaker:
        return Row(None, DROP_NO_SPEAKER if raw.text.strip() else DROP_EMPTY_ROW)
    if not raw.text.strip():
        return Row(None, DROP_NO_LINE)
    fixed = fix_text(raw.text)
    text = _tidy(fixed)
    if not text:
        return Row(None, DROP_DIRECTION_ONLY, repaired=fixed != raw.text)
    directions = ("(" in raw.text or "[" in raw.text) and len(text) < len(raw.text.strip())
    return Row(Line(speaker, text, episode, raw.line_no, len(text.split())), "", fixed != raw.text, directions)


def parse_aliases(specs: tuple[str, ...] | list[str], where: str = "--alias") -> dict[str, str]:
    """['Pickle Rick=Rick'] -> {'pickle rick': 'Rick'} (keys compared case-insensitively)."""
    out: dict[str, str] = {}
    for spec in specs:
        src, sep, dst = spec.partition("=")
        src_n, dst_n = normalize_speaker(src), normalize_speaker(dst)
        if not sep or not src_n or not dst_n:
            raise ScriptError(where, f"--alias {spec!r} is not of the form VARIANT=NAME", 'write it like --alias "Pickle Rick=Rick"')
        out[src_n.casefold()] = dst_n
    # Chains (A=B, B=C) resolve to the final name so the order of flags does not matter.
    for key, value in list(out.items()):
        seen = {key}
        while value.casefold() in out and value.casefold() not in seen:
            seen.add(value.casefold())
            value = out[value.casefold()]
        out[key] = value
    return out


class SpeakerNames:
    """Maps raw speaker cells to one display name per person (after aliases), cached per raw spelling."""

    def __init__(self, aliases: dict[str, str] | None = None):
        self.aliases = aliases or {}
        self._cache: dict[str, str] = {}
        self._display: dict[str, str] = {}  # casefold -> first display form seen

    def key(self, raw: str) -> str:
        """The case-folded identity of a name after aliases, without claiming a display spelling for it."""
        name = normalize_speaker(raw)
        return self.aliases.get(name.casefold(), name).casefold()

    def __call__(self, raw: str) -> str:
        hit = self._cache.get(raw)
        if hit is not None:
            return hit
        name = normalize_speaker(raw)
        if name:
            name = self.aliases.get(name.casefold(), name)
            name = self._display.setdefault(name.casefold(), name)
        if len(self._cache) < 200_000:  # bounded: generated/garbage files can have endless "speakers"
            self._cache[raw] = name
        return name
