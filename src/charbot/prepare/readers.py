"""Stream (speaker, line, episode) rows out of script exports: CSV, TSV and R `write.table` files.

Nothing here reads a whole file into memory: encoding and dialect are decided from a sample, then a
`csv.reader` walks the file once. Every row carries its physical line number for error messages.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from charbot.prepare.errors import ScriptError

SAMPLE_BYTES = 256 * 1024
CHUNK = 1 << 20
# Larger than any real line of dialogue; an unterminated quote swallows the file and hits this instead.
FIELD_LIMIT = 1 << 20

SPEAKER_NAMES = ("name", "char", "character", "raw_character_text", "speaker", "character_name", "who", "role")
LINE_NAMES = ("line", "dialog", "dialogue", "spoken_words", "line_text", "text", "quote", "utterance", "raw_text")
SEASON_NAMES = ("season", "season no.", "season_no", "season number", "season_number", "season_id")
EPISODE_NAMES = (
    "episode name", "episode_name", "episode title", "episode_title", "episode", "episode no.", "episode_no",
    "episode number", "episode_number", "episode_id", "movie", "film", "title", "act",
)
SCENE_NAMES = ("scene", "scene_id", "scene no.", "scene_number", "location_id")

_MAGIC = {b"PK\x03\x04": "a zip archive", b"\x1f\x8b": "a gzip file", b"%PDF": "a PDF", b"\x89PNG": "a PNG image"}


@dataclass(frozen=True)
class Columns:
    speaker: int
    line: int
    episode: tuple[int, ...] = ()
    names: tuple[str, ...] = ()

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


@dataclass
class RawRow:
    line_no: int
    speaker: str
    text: str
    episode: str


@dataclass
class ScriptSource:
    path: Path
    dialect: Dialect
    columns: Columns
    size: int
    header: list[str] = field(default_factory=list)


def _check_file(path: Path) -> int:
    try:
        if path.is_dir():
            raise ScriptError(str(path), "is a directory, not a script file", "pass the path of a .csv/.tsv/.txt script")
        size = path.stat().st_size
        if not path.is_file():
            # A pipe or device would block or never end; the reader needs a file it can read twice.
            raise ScriptError(str(path), "is not a regular file (a pipe, socket or device)", "save the script to a file first")
        with path.open("rb") as fh:
            head = fh.read(8192)
    except FileNotFoundError:
        raise ScriptError(str(path), "no such file", "check the path (or use --kaggle OWNER/DATASET to download one)") from None
    except PermissionError:
        raise ScriptError(str(path), "permission denied", "make the file readable (chmod +r)") from None
    except OSError as exc:
        raise ScriptError(str(path), f"cannot read ({exc.strerror or exc})", "pass a regular, readable file") from None
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            raise ScriptError(str(path), f"is {kind}, not a text script", "extract the .csv from it first")
    if size == 0 or not head.strip():
        raise ScriptError(str(path), "is empty", "export the script with a header row and one line of dialogue per row")
    if b"\x00" in head and not head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ScriptError(str(path), "looks binary (contains NUL bytes), not a text script", "pass a CSV/TSV text export")
    return size


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
    if episode_col is not None:
        episode: tuple[int, ...] = (_pick(header, episode_col, (), path, "--episode-col"),)
    else:
        parts = [_pick(header, None, SEASON_NAMES, path, ""), _pick(header, None, EPISODE_NAMES, path, ""), _pick(header, None, SCENE_NAMES, path, "")]
        episode = tuple(p for p in parts if p is not None and p not in (speaker, line))
    return Columns(speaker, line, episode, tuple(h.strip() for h in header))


class _CountingReader(io.RawIOBase):
    """Counts bytes read so the progress bar can follow a streaming parse."""

    def __init__(self, raw, on_read: Callable[[int], None] | None):
        self._raw = raw
        self._on_read = on_read

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self._raw.readinto(b)
        if n and self._on_read:
            self._on_read(n)
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def open_script(path: str | Path, *, speaker_col=None, line_col=None, episode_col=None) -> ScriptSource:
    path = Path(path).expanduser()
    size = _check_file(path)
    encoding = detect_encoding(path)
    dialect = detect_dialect(path, encoding)
    try:
        with path.open("r", encoding=encoding, newline="") as fh:
            header = next(csv.reader(fh, **_fmt(dialect)), [])
    except csv.Error as exc:  # e.g. a quote opened in the header and never closed
        raise ScriptError(f"{path}:1", f"malformed header row ({exc})", 'fix the quoting in the first row (a " inside a name is written "")') from None
    if dialect.row_names:
        header = [""] + header
    if sum(1 for h in header if h.strip()) == 0:
        raise ScriptError(f"{path}:1", "the header row is empty", "put column names (e.g. name,line) in the first row")
    columns = detect_columns(path, header, speaker_col=speaker_col, line_col=line_col, episode_col=episode_col)
    return ScriptSource(path, dialect, columns, size, header)


def _fmt(d: Dialect) -> dict:
    fmt: dict = {"delimiter": d.delimiter, "strict": True, "doublequote": d.doublequote}
    if d.escapechar:
        fmt["escapechar"] = d.escapechar
    return fmt


def iter_rows(src: ScriptSource, on_read: Callable[[int], None] | None = None) -> Iterator[RawRow]:
    """Every data row as a RawRow. Raises ScriptError (with the line number) on a malformed row."""
    old_limit = csv.field_size_limit()
    csv.field_size_limit(FIELD_LIMIT)
    cols = src.columns
    width = len(src.header)
    raw = src.path.open("rb")
    try:
        text = io.TextIOWrapper(io.BufferedReader(_CountingReader(raw, on_read), CHUNK), encoding=src.dialect.encoding, newline="")
        reader = csv.reader(text, **_fmt(src.dialect))
        start = 1
        try:
            next(reader, None)  # header
            start = reader.line_num + 1
            for row in reader:
                line_no = start
                start = reader.line_num + 1
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                if len(row) != width:
                    fix = "quote fields that contain the delimiter, or fix the row"
                    if len(row) == 1:
                        fix = f"this row has no {src.dialect.describe().split('-')[0]} delimiter; use one delimiter throughout the file"
                    raise ScriptError(f"{src.path}:{line_no}", f"row has {len(row)} fields but the header has {width}", fix)
                yield RawRow(
                    line_no, row[cols.speaker], row[cols.line],
                    " | ".join(row[i].strip() for i in cols.episode) if cols.episode else "",
                )
        except csv.Error as exc:
            msg = str(exc)
            if "field larger" in msg or "end of data" in msg or "unexpected end" in msg:
                raise ScriptError(f"{src.path}:{start}", "unterminated quote: a quoted field starts here and never closes", 'close the quote (a " inside a field is written "")') from None
            raise ScriptError(f"{src.path}:{start}", f"malformed CSV ({msg})", "fix the quoting on that line") from None
        except UnicodeDecodeError as exc:
            raise ScriptError(f"{src.path}:{start}", f"cannot decode text as {src.dialect.encoding} (byte {exc.start})", "save the file as UTF-8") from None
    finally:
        raw.close()
        csv.field_size_limit(old_limit)
