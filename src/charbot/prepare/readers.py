"""Stream (speaker, line, episode) rows out of script exports: CSV, TSV and R `write.table` files.

Nothing here reads a whole file into memory: prepare/detect.py decides the encoding, dialect and columns
from a sample, then a `csv.reader` walks the file once. Every row carries its physical line number for error
messages.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from charbot.prepare.detect import CHUNK, Columns, Dialect, detect_columns, detect_dialect, detect_encoding
from charbot.prepare.errors import ScriptError

_MAGIC = {b"PK\x03\x04": "a zip archive", b"\x1f\x8b": "a gzip file", b"%PDF": "a PDF", b"\x89PNG": "a PNG image"}


@dataclass
class RawRow:
    line_no: int
    speaker: str
    text: str
    episode: str  # every episode column, scene included: the lines of one such key are one conversation
    whole_episode: str = ""  # the episode without its scene


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
                    " | ".join(row[i].strip() for i in cols.episode), " | ".join(row[i].strip() for i in cols.whole_episode),
                )
        except csv.Error as exc:
            if quote_left_open(src.path, src.dialect, start):
                raise ScriptError(f"{src.path}:{start}", "unterminated quote: a quoted field starts here and never closes", 'close the quote (a " inside a field is written "")') from None
            raise ScriptError(f"{src.path}:{start}", f"malformed CSV ({exc})", "fix the quoting on that line") from None
        except UnicodeDecodeError as exc:
            raise ScriptError(f"{src.path}:{start}", f"cannot decode text as {src.dialect.encoding} (byte {exc.start})", "save the file as UTF-8") from None
    finally:
        raw.close()


def quote_left_open(path: Path, d: Dialect, start: int) -> bool:
    """Whether the record on line `start` opens a quoted field that the rest of the file never closes.

    csv tells why it failed only in its message text, which is no interface; so that one record is read again
    by csv's own rules for the dialect: a quote opens a field only at the field's start, and inside it an
    escaped character or (with doublequote) a doubled quote does not close it. An unterminated quote makes
    csv fail on the record where it opens (at the end of the data or at the field size limit).
    """
    esc = d.escapechar or ""
    in_quotes = re.compile("[" + re.escape('"' + esc) + "]")
    unquoted = re.compile("[" + re.escape(d.delimiter + esc) + "\r\n]")
    quoted, field_start = False, True
    with path.open("r", encoding=d.encoding, errors="replace", newline="") as fh:
        for line in itertools.islice(fh, start - 1, None):
            i = 0
            while i < len(line):
                if quoted:
                    hit = in_quotes.search(line, i)
                    if hit is None:
                        break  # the field goes on into the next line
                    i = hit.end()
                    if hit.group() == esc:
                        i += 1  # the escaped character, even a newline, stays in the field
                    elif d.doublequote and line.startswith('"', i):
                        i += 1
                    elif d.doublequote and line[i:i + 1] not in ("", d.delimiter, "\r", "\n"):
                        return False  # text right after a closing quote: csv's strict mode rejects that instead
                    else:
                        quoted = False
                elif field_start and line[i] == '"':
                    quoted, field_start, i = True, False, i + 1
                else:
                    hit = unquoted.search(line, i)
                    if hit is None:
                        break
                    if hit.group() in "\r\n":
                        return False  # the record ended with its quotes closed: csv failed for another reason
                    field_start = hit.group() == d.delimiter
                    i = hit.end() + (hit.group() == esc)
    return quoted
