"""Decide how a script export is written, from a sample: its encoding, its delimiter and quoting, its columns."""

from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from charbot.prepare.errors import ScriptError

SAMPLE_BYTES = 256 * 1024
CHUNK = 1 << 20

SPEAKER_NAMES = ("name", "char", "character", "raw_character_text", "speaker", "character_name", "who", "role")
LINE_NAMES = ("line", "dialog", "dialogue", "spoken_words", "line_text", "text", "quote", "utterance", "raw_text")
SEASON_NAMES = ("season", "season no.", "season_no", "season number", "season_number", "season_id")
EPISODE_NAMES = (
    "episode name", "episode_name", "episode title", "episode_title", "episode", "episode no.", "episode_no",
    "episode number", "episode_number", "episode_id", "movie", "film", "title", "act",
)
SCENE_NAMES = ("scene", "scene_id", "scene no.", "scene_number", "location_id")


@dataclass(frozen=True)
class Columns:
    speaker: int
    line: int
    episode: tuple[int, ...] = ()
    names: tuple[str, ...] = ()
    scene: int | None = None  # which of `episode` is a scene column: the episode itself is the rest

    @property
    def whole_episode(self) -> tuple[int, ...]:
        return tuple(i for i in self.episode if i != self.scene)

    def describe(self) -> str:
        ep = "+".join(self.names[i] or f"#{i + 1}" for i in self.episode) or "(none: empty rows split scenes)"
        return f"speaker={self.names[self.speaker]!r} line={self.names[self.line]!r} episode={ep}"


@dataclass(frozen=True)
class Dialect:
    encoding: str
    delimiter: str
    escapechar: str | None
    doublequote: bool
    row_names: bool  # R write.table: the header has one name fewer than the rows (row names column)

    def describe(self) -> str:
        names = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe", " ": "space (R write.table)"}
        return f"{names.get(self.delimiter, repr(self.delimiter))}-delimited, {self.encoding}"



def detect_encoding(path: Path) -> str:
    """UTF-8 (with or without BOM) when the whole file decodes; else cp1252, else latin-1. One streaming pass."""
    with path.open("rb") as fh:
        head = fh.read(4)
        if head.startswith(codecs.BOM_UTF8):
            enc = "utf-8-sig"
        elif head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return "utf-16"
        else:
            enc = "utf-8"
        fh.seek(0)
        decoder = codecs.getincrementaldecoder("utf-8")()
        cp1252_ok = True
        cp_decoder = codecs.getincrementaldecoder("cp1252")()
        utf8_ok = True
        while chunk := fh.read(CHUNK):
            if utf8_ok:
                try:
                    decoder.decode(chunk)
                    continue
                except UnicodeDecodeError:
                    utf8_ok = False
                    fh.seek(0)  # re-check the whole file as cp1252 from the start
                    continue
            try:
                cp_decoder.decode(chunk)
            except UnicodeDecodeError:
                cp1252_ok = False
                break
        if utf8_ok:
            try:
                decoder.decode(b"", final=True)
                return enc
            except UnicodeDecodeError:
                pass
    return "cp1252" if cp1252_ok else "latin-1"


def _sample_lines(path: Path, encoding: str) -> list[str]:
    with path.open("r", encoding=encoding, errors="replace", newline="") as fh:
        text = fh.read(SAMPLE_BYTES)
    lines = text.splitlines()
    if len(text) >= SAMPLE_BYTES and len(lines) > 1:
        lines = lines[:-1]  # the last one is probably cut in half
    return lines[:200]


def _parse_sample(lines: list[str], **fmt) -> list[list[str]] | None:
    try:
        return [row for row in csv.reader(io.StringIO("\n".join(lines)), **fmt) if row]
    except csv.Error:
        return None


def _consistency(rows: list[list[str]]) -> float:
    """Share of rows with the header's field count (or one more, for R row names)."""
    if len(rows[0]) < 2:
        return 0.0
    if len(rows) < 2:
        return 1.0  # header only: the header alone decides (and "no rows" is reported later)
    n = len(rows[0])
    body = rows[1:-1] if len(rows) > 2 else rows[1:]  # the last sampled row may be incomplete (multi-line field)
    same = sum(1 for r in body if len(r) in (n, n + 1))
    return same / max(len(body), 1)


def detect_dialect(path: Path, encoding: str) -> Dialect:
    lines = _sample_lines(path, encoding)
    if not lines:
        raise ScriptError(str(path), "is empty", "export the script with a header row")
    first = lines[0].lstrip("\ufeff")
    best: tuple[float, Dialect] | None = None
    candidates = [",", "\t", ";", "|"]
    # R write.table quotes every field and separates them with spaces; plain prose never starts like that.
    if re.match(r'^\s*"[^"]*"( "[^"]*")+\s*$', first):
        candidates.insert(0, " ")
    for delim in candidates:
        if delim != " " and delim not in first:
            continue
        fmt = dict(delimiter=delim, escapechar="\\", doublequote=False) if delim == " " else dict(delimiter=delim)
        rows = _parse_sample(lines, **fmt)
        if not rows:
            continue
        score = _consistency(rows) + (0.01 * len(rows[0]))
        row_names = len(rows) > 1 and all(len(r) == len(rows[0]) + 1 for r in rows[1:3])
        d = Dialect(encoding, delim, fmt.get("escapechar"), fmt.get("doublequote", True), row_names)
        if best is None or score > best[0]:
            best = (score, d)
    # A poor score still wins when the header is clearly delimited: the row-level check then names the bad line.
    if best is None or best[0] < 0.02:
        raise ScriptError(
            str(path) + ":1",
            "cannot tell how the columns are separated (tried comma, tab, semicolon, pipe and R write.table)",
            "export it as CSV with a header row such as name,line",
        )
    return best[1]


def _norm_header(name: str) -> str:
    return " ".join(name.replace("\ufeff", "").strip().strip('"').lower().split())


def _pick(header: list[str], wanted: str | None, names: tuple[str, ...], path: Path, flag: str) -> int | None:
    norm = [_norm_header(h) for h in header]
    if wanted is not None:
        w = wanted.strip()
        if w.isdigit() and 1 <= int(w) <= len(header):
            return int(w) - 1
        if _norm_header(w) in norm:
            return norm.index(_norm_header(w))
        shown = ", ".join(repr(h) for h in header if h) or "(none)"
        raise ScriptError(f"{path}:1", f"{flag} {wanted!r} is not a column (columns: {shown})", f"pass one of those names or a 1-based column number to {flag}")
    for cand in names:
        if cand in norm:
            return norm.index(cand)
    return None


def detect_columns(path: Path, header: list[str], *, speaker_col=None, line_col=None, episode_col=None) -> Columns:
    norm = [_norm_header(h) for h in header]
    seen: dict[str, int] = {}
    for i, name in enumerate(norm):
        if name and name in seen:
            raise ScriptError(
                f"{path}:1", f"duplicate column name {header[i].strip()!r} (columns {seen[name] + 1} and {i + 1})",
                "rename one of them in the header row",
            )
        seen[name] = i
    speaker = _pick(header, speaker_col, SPEAKER_NAMES, path, "--speaker-col")
    line = _pick(header, line_col, LINE_NAMES, path, "--line-col")
    if speaker is None or line is None:
        missing = "speaker" if speaker is None else "line"
        shown = ", ".join(repr(h) for h in header if h.strip()) or "(none)"
        raise ScriptError(
            f"{path}:1", f"no {missing} column found in the header (columns: {shown})",
            "name the columns with --speaker-col and --line-col (e.g. --speaker-col name --line-col line)",
        )
    if speaker == line:
        raise ScriptError(f"{path}:1", "the speaker and line columns are the same column", "pass different --speaker-col and --line-col")
    scene = None
    if episode_col is not None:
        episode: tuple[int, ...] = (_pick(header, episode_col, (), path, "--episode-col"),)
    else:
        parts = [_pick(header, None, SEASON_NAMES, path, ""), _pick(header, None, EPISODE_NAMES, path, ""), _pick(header, None, SCENE_NAMES, path, "")]
        episode = tuple(p for p in parts if p is not None and p not in (speaker, line))
        scene = parts[2] if parts[2] in episode else None
    return Columns(speaker, line, episode, tuple(h.strip() for h in header), scene)
