"""What `prepare` did, as numbers: written to report.json and shown as a rich table."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field

from charbot.prepare.clean import Row
from charbot.prepare.splits import SPLITS


@dataclass
class PrepareReport:
    source: str
    format: str = ""
    columns: str = ""
    character: str = ""
    rows_read: int = 0
    rows_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    text_repaired: int = 0  # cells whose mojibake was fixed
    directions_removed: int = 0  # lines that had a (stage direction) taken out
    speakers: int = 0
    top_speakers: list[tuple[str, int]] = field(default_factory=list)
    episodes: int = 0
    character_rows_raw: int = 0  # rows credited to the character before cleaning dropped any
    character_lines: int = 0
    character_episodes: int = 0
    examples: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    skipped: dict[str, int] = field(default_factory=dict)
    split_unit: str = "episode"  # what was split whole: episode, scene or block (splits.py)
    split_by: str = ""  # the same, in words, with why
    units_split: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    episodes_split: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))  # episodes with examples in each
    held_out: dict[str, list[str]] = field(default_factory=dict)  # the val and test units (first 100)
    words: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    cast: dict[str, int] = field(default_factory=dict)  # other speakers' examples added to train (--cast)
    context: int = 7
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    card: str = ""
    notes: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def approx_tokens(self) -> dict[str, int]:
        # English dialogue runs about 1.3 BPE tokens per whitespace word; a cheap, tokenizer-free estimate.
        return {k: round(v * 1.3) for k, v in self.words.items()}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["approx_tokens"] = self.approx_tokens
        d["top_speakers"] = [{"name": n, "lines": c} for n, c in self.top_speakers]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2) + "\n"

    def table(self):
        from rich.table import Table

        t = Table(title=f"charbot prepare: {self.character}", show_header=False, title_justify="left")
        t.add_column("what", style="bold")
        t.add_column("value")
        t.add_row("source", f"{self.source} ({self.format})")
        t.add_row("columns", self.columns)
        t.add_row("rows read", f"{self.rows_read:,}")
        t.add_row("rows kept", f"{self.rows_kept:,}")
        for reason, n in sorted(self.dropped.items()):
            t.add_row(f"  dropped: {reason}", f"{n:,}")
        if self.text_repaired:
            t.add_row("mojibake repaired", f"{self.text_repaired:,} cells")
        if self.directions_removed:
            t.add_row("stage directions removed", f"{self.directions_removed:,} lines")
        t.add_row("speakers / episodes", f"{self.speakers:,} / {self.episodes:,}")
        t.add_row("top speakers", ", ".join(f"{n} ({c:,})" for n, c in self.top_speakers[:6]))
        t.add_row(f"{self.character}'s lines", f"{self.character_lines:,} kept of {self.character_rows_raw:,} rows, in {self.character_episodes:,} episodes")
        ex, units = self.examples, self.units_split
        t.add_row("split by", self.split_by)
        t.add_row("examples", " / ".join(f"{s} {ex[s]:,} ({units[s]} {self.split_unit}{'s' if units[s] != 1 else ''})" for s in SPLITS))
        for reason, n in sorted(self.skipped.items()):
            t.add_row(f"  skipped: {reason}", f"{n:,}")
        tok = self.approx_tokens
        t.add_row("tokens (≈1.3×words)", " / ".join(f"{s} {tok[s]:,}" for s in SPLITS))
        if self.cast:
            c = self.cast
            t.add_row("cast (train only)", f"{c['examples']:,} examples of {c['speakers']} other speakers with ≥{c['min_lines']} lines, "
                      f"≈{round(c['words'] * 1.3):,} tokens")
        t.add_row("persona card", self.card)
        for note in self.notes:
            t.add_row("note", note)
        return t


@dataclass
class Tally:
    """Everything `prepare` counts, kept in one place while the script is read; the report is built from it."""

    rows_read: int = 0
    rows_kept: int = 0
    character_rows_raw: int = 0
    text_repaired: int = 0
    directions_removed: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    lines: Counter[str] = field(default_factory=Counter)  # kept lines per speaker
    episodes: set[str] = field(default_factory=set)
    character_episodes: set[str] = field(default_factory=set)
    episode_examples: Counter[str] = field(default_factory=Counter)  # the character's, in order of the first one
    examples: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    words: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    cast: dict[str, int] = field(default_factory=dict)

    def row(self, row: Row, is_char: bool) -> None:
        self.rows_read += 1
        self.character_rows_raw += is_char
        self.text_repaired += row.repaired
        if row.line is None:
            self.dropped[row.dropped] += 1
            return
        self.rows_kept += 1
        self.directions_removed += row.directions
        self.lines[row.line.speaker] += 1
        self.episodes.add(row.line.episode)

    def example(self, split: str, words: int) -> None:
        self.examples[split] += 1
        self.words[split] += words

    def report(self, character: str, **fields) -> PrepareReport:
        return PrepareReport(
            character=character, rows_read=self.rows_read, rows_kept=self.rows_kept, dropped=dict(self.dropped),
            text_repaired=self.text_repaired, directions_removed=self.directions_removed, speakers=len(self.lines),
            top_speakers=self.lines.most_common(10), episodes=len(self.episodes), character_rows_raw=self.character_rows_raw,
            character_lines=self.lines[character], character_episodes=len(self.character_episodes),
            examples=dict(self.examples), skipped=dict(self.skipped), words=dict(self.words), cast=dict(self.cast), **fields,
        )
