"""`prepare`: one streaming pass from a script file to train/val JSONL, a persona card and a report."""

from __future__ import annotations

import csv
import difflib
import json
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from charbot.persona import CharacterCard, load_card, render, save_card
from charbot.prepare.card import CardDrafter, Candidate, build_card
from charbot.prepare.cast import CastExamples
from charbot.prepare.clean import (
    DROP_DIRECTION_ONLY, DROP_EMPTY_ROW, DROP_NO_LINE, DROP_NO_SPEAKER, SpeakerNames, clean_line, fix_text,
    normalize_speaker, parse_aliases,
)
from charbot.prepare.errors import ScriptError
from charbot.prepare.examples import (
    ContextWindow, Line, dialogue_words, example_record, to_messages, val_score, wide_header, wide_row,
)
from charbot.prepare.outputs import OutputSet
from charbot.prepare.readers import ScriptSource, iter_rows, open_script
from charbot.prepare.report import PrepareReport

PROGRESS_MIN_BYTES = 4 << 20  # small files finish before a bar would be readable
USER_PLACEHOLDER = "User"
NO_CONTEXT = "no other speaker before it in its episode"


@dataclass
class PrepareResult:
    out_dir: Path
    report: PrepareReport
    files: dict[str, Path]
    card: CharacterCard


def slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.casefold()).strip("-") or "character"


def _validate(script: str, character: str, context: int, val_fraction: float) -> None:
    if not normalize_speaker(character):
        raise ScriptError(script, f"--character {character!r} is not a usable name", "pass the speaker's name as it appears in the script, e.g. --character Rick")
    if not isinstance(context, int) or context < 1:
        raise ScriptError(script, f"--context {context} is not a valid number of context lines", "use 1 or more (the tutorial used 7)")
    if context > 100:
        raise ScriptError(script, f"--context {context} is more lines than any prompt can hold", "use at most 100 (the tutorial used 7)")
    if not 0.0 <= val_fraction < 1.0:
        raise ScriptError(script, f"--val-fraction {val_fraction} is outside [0, 1)", "use e.g. 0.1 for 10% of episodes in validation")


@contextmanager
def _progress(src: ScriptSource, show: bool) -> Iterator:
    if not show or src.size < PROGRESS_MIN_BYTES:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    with Progress(
        TextColumn("reading {task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), transient=True,
    ) as bar:
        task = bar.add_task(src.path.name, total=src.size)
        yield lambda n: bar.advance(task, n)


def _unknown_character(src: ScriptSource, character: str, counts: Counter[str]) -> ScriptError:
    by_key = {name.casefold(): name for name in counts}
    close = difflib.get_close_matches(character.casefold(), list(by_key), n=3, cutoff=0.6)
    if close:
        hint = "did you mean " + " or ".join(f"{by_key[k]} ({counts[by_key[k]]:,} lines)" for k in close) + "?"
    else:
        hint = "speakers with most lines: " + ", ".join(f"{n} ({c:,})" for n, c in counts.most_common(5))
    return ScriptError(str(src.path), f"no speaker {character!r}; {hint}", "pass one of those to --character (or merge spellings with --alias VARIANT=NAME)")


def prepare(
    script: str | Path,
    character: str,
    out: str | Path | None = None,
    *,
    context: int = 7,
    aliases: tuple[str, ...] | list[str] = (),
    speaker_col: str | None = None,
    line_col: str | None = None,
    episode_col: str | None = None,
    val_fraction: float = 0.1,
    wide_csv: bool = False,
    force: bool = False,
    cast: int = 0,
    show_progress: bool = False,
) -> PrepareResult:
    """`cast` > 0: also train on every other speaker with at least that many lines (see prepare/cast.py)."""
    _validate(str(script), character, context, val_fraction)
    if cast < 0:
        raise ScriptError(str(script), f"--cast {cast} is negative", "use 0 (off) or a minimum number of lines, e.g. --cast 10")
    alias_map = parse_aliases(aliases, where=str(script))
    names = SpeakerNames(alias_map)
    char_key = names.key(character)
    src = open_script(script, speaker_col=speaker_col, line_col=line_col, episode_col=episode_col)
    out_dir = Path(out) if out is not None else Path("out") / slugify(char_key)
    title = src.path.stem.replace("_", " ")
    rep = PrepareReport(source=src.path.name, format=src.dialect.describe(), columns=src.columns.describe(), context=context, val_fraction=val_fraction)
    card_path = out_dir / "persona.json"
    existing = load_card(card_path) if card_path.exists() and not force else None

    counts: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    episodes: set[str] = set()
    char_episodes: set[str] = set()
    split_examples: dict[str, int] = {}  # episode -> examples, to repair an empty split afterwards
    drafter = CardDrafter(character)
    window = ContextWindow(context)
    char_name: str | None = None
    system: str | None = None
    first_line = ""
    scene = 0

    with OutputSet(out_dir) as outs:
        paths = {"train": outs.temp("train.jsonl"), "val": outs.temp("val.jsonl")}
        files = {k: p.open("w", encoding="utf-8", newline="\n") for k, p in paths.items()}
        wide_fh = outs.temp("wide.csv").open("w", encoding="utf-8", newline="") if wide_csv else None
        wide = csv.writer(wide_fh) if wide_fh else None
        cast_examples = CastExamples(outs.scratch("cast.jsonl"), title, cast, USER_PLACEHOLDER) if cast else None
        if wide:
            wide.writerow(wide_header(context))
        try:
            with _progress(src, show_progress) as on_read:
                for row in iter_rows(src, on_read):
                    rep.rows_read += 1
                    raw_text = row.text
                    speaker = names(row.speaker)
                    is_char = bool(speaker) and speaker.casefold() == char_key
                    if is_char:
                        rep.character_rows_raw += 1
                    if not speaker:
                        if not raw_text.strip():
                            dropped[DROP_EMPTY_ROW] += 1
                            # Without an episode column, an all-empty row is the only scene break there is
                            # (the Kaggle Simpsons export leaves one where a scene heading was).
                            scene += not src.columns.episode
                        else:
                            dropped[DROP_NO_SPEAKER] += 1
                        continue
                    if not raw_text.strip():
                        dropped[DROP_NO_LINE] += 1
                        continue
                    text = clean_line(raw_text)
                    if not raw_text.isascii() and fix_text(raw_text) != raw_text:
                        rep.text_repaired += 1
                    if not text:
                        dropped[DROP_DIRECTION_ONLY] += 1
                        continue
                    if ("(" in raw_text or "[" in raw_text) and len(text) < len(raw_text.strip()):
                        rep.directions_removed += 1
                    rep.rows_kept += 1
                    counts[speaker] += 1
                    episode = row.episode or (src.path.stem if scene == 0 else f"{src.path.stem} / scene {scene}")
                    episodes.add(episode)
                    words = len(text.split())
                    line = Line(speaker, text, episode, row.line_no, words)
                    before = window.before(line)
                    drafter.observe(text, is_char)
                    if is_char:
                        opener = episode not in char_episodes
                        char_episodes.add(episode)
                        if system is None:
                            char_name = speaker
                            first_line = text
                            card0 = existing or build_card(char_name, title, CardDrafter(char_name), "", text)
                            system = render(card0, USER_PLACEHOLDER).system
                        messages = to_messages(system, char_name, before, line)
                        if messages is None:
                            skipped[NO_CONTEXT] += 1
                        else:
                            split = "val" if val_score(episode) < val_fraction else "train"
                            files[split].write(example_record(messages, line) + "\n")
                            rep.examples[split] += 1
                            rep.words[split] += dialogue_words(messages)
                            split_examples[episode] = split_examples.get(episode, 0) + 1
                            if wide:
                                wide.writerow(wide_row(before, line, context))
                            prev = before[-1]
                            if prev.speaker != char_name:
                                drafter.offer(Candidate(prev.text, text, episode, opener), words)
                    elif cast_examples is not None:
                        cast_examples.add(before, line)
                    window.push(line)
        finally:
            for fh in files.values():
                fh.close()
            if wide_fh:
                wide_fh.close()
            if cast_examples is not None:
                cast_examples.close()

        rep.dropped = dict(dropped)
        rep.skipped = dict(skipped)
        rep.speakers = len(counts)
        rep.episodes = len(episodes)
        rep.top_speakers = counts.most_common(10)
        rep.character_episodes = len(char_episodes)
        if rep.rows_read == 0:
            raise ScriptError(str(src.path), "has a header but no rows", "add one line of dialogue per row under the header")
        if rep.character_rows_raw == 0:
            raise _unknown_character(src, character, counts)
        rep.character = char_name or normalize_speaker(character)
        rep.character_lines = counts.get(char_name, 0) if char_name else 0
        if rep.character_lines == 0:
            raise ScriptError(
                str(src.path), f"{rep.character!r} has {rep.character_rows_raw} rows but none with usable dialogue (empty or stage directions only)",
                "check --line-col points at the dialogue column",
            )
        if sum(rep.examples.values()) == 0:
            raise ScriptError(
                str(src.path), f"no examples: none of {rep.character}'s {rep.character_lines} lines follows another speaker's line in the same episode",
                "use a script where the character answers other speakers (or check --episode-col)",
            )
        moved = _ensure_both_splits(rep, split_examples, paths, val_fraction)
        split_of = {e: moved.get(e) or ("val" if val_score(e) < val_fraction else "train") for e in split_examples}
        rep.episodes_split = {k: sum(1 for v in split_of.values() if v == k) for k in ("train", "val")}
        rep.val_episodes = sorted(e for e, v in split_of.items() if v == "val")[:100]
        if cast_examples is not None:
            # an episode without the character's lines is split by the same rule, so no held-out one leaks in
            def is_train(e: str) -> bool:
                return split_of.get(e, "val" if val_score(e) < val_fraction else "train") == "train"

            n, speakers, words = cast_examples.merge_into(paths["train"], counts, is_train)
            rep.cast = {"min_lines": cast, "speakers": speakers, "examples": n, "words": words}
        if len(split_examples) < 2:
            rep.notes.append("one episode only: no validation split (give the file an episode column, or --episode-col)")

        notes = (
            f"Drafted by `charbot prepare` from {src.path.name}: {rep.rows_read:,} rows read, {rep.rows_kept:,} kept; "
            f"{rep.character} has {rep.character_lines:,} lines in {rep.character_episodes:,} episode(s); "
            f"{rep.speakers:,} speakers in all (most lines: {', '.join(f'{n} {c:,}' for n, c in rep.top_speakers[:5])}). "
            "Example dialogue and first message are real lines from the script; edit this card freely."
        )
        if existing is not None:
            card = existing
            rep.card = f"kept existing {card_path} (use --force to redraft)"
        else:
            card = build_card(rep.character, title, drafter, notes, first_line)
            save_card(card, outs.temp("persona.json"))
            rep.card = f"drafted {card_path}"
        rep.outputs = {name: str(outs.final(name)) for name in [*outs._temps, "report.json"]}
        outs.temp("report.json").write_text(rep.to_json(), encoding="utf-8")
        written = outs.commit()
    if existing is not None:
        written["persona.json"] = card_path
    return PrepareResult(out_dir, rep, written, card)


def _ensure_both_splits(rep: PrepareReport, split_examples: dict[str, int], paths: dict[str, Path], val_fraction: float) -> dict[str, str]:
    """With 2+ episodes and a validation fraction, neither split may come out empty: move the nearest episode over.

    A single episode always goes to train. Returns {episode: split} for the episodes moved.
    """
    if len(split_examples) < 2:
        if rep.examples["val"]:
            return _move(rep, paths, next(iter(split_examples)), "val", "train")
        return {}
    if val_fraction > 0 and rep.examples["val"] == 0:
        return _move(rep, paths, min(split_examples, key=lambda e: (val_score(e), e)), "train", "val")
    if rep.examples["train"] == 0:
        return _move(rep, paths, max(split_examples, key=lambda e: (val_score(e), e)), "val", "train")
    return {}


def _move(rep: PrepareReport, paths: dict[str, Path], episode: str, src: str, dst: str) -> dict[str, str]:
    keep = paths[src].with_suffix(".move")
    try:
        _copy_split(paths[src], keep, paths[dst], episode, rep, src, dst)
    finally:
        keep.unlink(missing_ok=True)
    return {episode: dst}


def _copy_split(src_path: Path, keep: Path, dst_path: Path, episode: str, rep: PrepareReport, src: str, dst: str) -> None:
    moved = 0
    with src_path.open(encoding="utf-8") as fin, keep.open("w", encoding="utf-8") as fkeep, dst_path.open("a", encoding="utf-8") as fdst:
        for text in fin:
            record = json.loads(text)
            if record["episode"] == episode:
                fdst.write(text)
                moved += 1
                words = dialogue_words(record["messages"])
                rep.words[src] -= words
                rep.words[dst] += words
            else:
                fkeep.write(text)
    keep.replace(src_path)
    rep.examples[src] -= moved
    rep.examples[dst] += moved
