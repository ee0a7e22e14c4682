"""`prepare`: one streaming pass from a script file to train/val JSONL, a persona card and a report."""

from __future__ import annotations

import csv
import difflib
import re
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from charbot.persona import CharacterCard, load_card, render, save_card
from charbot.prepare.card import CardDrafts, DraftLine, LineSpool, stub_card
from charbot.prepare.cast import CastExamples
from charbot.prepare.clean import DROP_EMPTY_ROW, SpeakerNames, classify, normalize_speaker, parse_aliases
from charbot.prepare.errors import ScriptError
from charbot.prepare.examples import ContextWindow, Line, Spool, dialogue_words, to_messages, wide_header, wide_row
from charbot.prepare.splits import HELD_OUT, SPLITS, Units, Where
from charbot.prepare.outputs import OutputSet
from charbot.prepare.readers import ScriptSource, iter_rows, open_script
from charbot.prepare.report import PrepareReport, Tally

PROGRESS_MIN_BYTES = 4 << 20  # small files finish before a bar would be readable
USER_PLACEHOLDER = "User"
NO_CONTEXT = "no other speaker before it in its episode"
CUT_CONTEXT = "no other speaker before it in its block (context cut at the block start)"


@dataclass
class PrepareResult:
    out_dir: Path
    report: PrepareReport
    files: dict[str, Path]
    card: CharacterCard


def slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.casefold()).strip("-") or "character"


def _validate(script: str, character: str, context: int, val_fraction: float, test_fraction: float, cast: int) -> None:
    """Every option's range, checked here only (the CLI's click types only turn text into numbers)."""
    if not normalize_speaker(character):
        raise ScriptError(script, f"--character {character!r} is not a usable name", "pass the speaker's name as it appears in the script, e.g. --character Rick")
    if not isinstance(context, int) or context < 1:
        raise ScriptError(script, f"--context {context} is not a valid number of context lines", "use 1 or more (the tutorial used 7)")
    if context > 100:
        raise ScriptError(script, f"--context {context} is more lines than any prompt can hold", "use at most 100 (the tutorial used 7)")
    if not 0.0 <= val_fraction < 1.0:
        raise ScriptError(script, f"--val-fraction {val_fraction} is outside [0, 1)", "use e.g. 0.1 for 10% of episodes in validation")
    if not 0.0 <= test_fraction < 1.0:
        raise ScriptError(script, f"--test-fraction {test_fraction} is outside [0, 1)", "use e.g. 0.1 for 10% of episodes in the test split")
    if val_fraction + test_fraction >= 1.0:
        raise ScriptError(script, f"--val-fraction {val_fraction} and --test-fraction {test_fraction} leave nothing to train on",
                          "keep their sum below 1, e.g. 0.1 and 0.1")
    if cast < 0:
        raise ScriptError(script, f"--cast {cast} is negative", "use 0 (off) or a minimum number of lines, e.g. --cast 10")


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
    test_fraction: float = 0.1,
    wide_csv: bool = False,
    force: bool = False,
    cast: int = 0,
    show_progress: bool = False,
    draft_with=None,
) -> PrepareResult:
    """`cast` > 0: also train on every other speaker with at least that many lines (see prepare/cast.py), and
    draft a card for each (cards/<name>.json). `draft_with`: a Backend that writes the drafted cards'
    description and personality from sampled lines (prepare/model_draft.py); the statistical draft stays
    where its reply is unusable."""
    _validate(str(script), character, context, val_fraction, test_fraction, cast)
    names = SpeakerNames(parse_aliases(aliases, where=str(script)))
    src = open_script(script, speaker_col=speaker_col, line_col=line_col, episode_col=episode_col)
    out_dir = Path(out) if out is not None else Path("out") / slugify(names.key(character))
    card_path = out_dir / "persona.json"
    existing = load_card(card_path) if card_path.exists() and not force else None

    with OutputSet(out_dir) as outs:
        split_paths = {split: outs.temp(f"{split}.jsonl") for split in SPLITS}  # first in the report's list of outputs
        with Sinks(outs, _title(src), context, wide_csv, cast) as sinks:
            reading = Reading(src, names, character, existing, sinks, LineSpool(outs.scratch("lines.jsonl")))
            with _progress(src, show_progress) as on_read:
                reading.run(on_read)
        name = _check(src, character, reading)
        units = reading.units
        splits = units.choose(val_fraction, test_fraction)
        episodes = _write_splits(split_paths, sinks, reading.tally, units)

        rep = reading.tally.report(
            name, source=src.path.name, format=src.dialect.describe(), columns=src.columns.describe(),
            context=context, val_fraction=val_fraction, test_fraction=test_fraction, split_unit=units.kind, split_by=units.describe(),
            units_split={split: len(splits.units(split)) for split in SPLITS},
            episodes_split={split: len(episodes[split]) for split in SPLITS},
            held_out={split: sorted(splits.units(split))[:100] for split in HELD_OUT},
        )
        if len(splits.of) < 2 and val_fraction + test_fraction > 0:
            rep.notes.append("one example only: nothing held out (give the script more of the character's lines)")
        for split, fraction in (("val", val_fraction), ("test", test_fraction)):
            if fraction > 0 and not splits.units(split):
                rep.notes.append(f"too few {units.kind}s for a {split} split: {split}.jsonl is empty")
        cast_names = [n for n, c in reading.tally.lines.items() if cast and c >= cast and n != name]
        cast_paths = {n: out_dir / "cards" / f"{slugify(n)}.json" for n in cast_names}
        cast_paths = {n: p for n, p in cast_paths.items() if force or not p.exists()}  # existing cards are kept
        drafted = _draft_cards(src, rep, reading, units, [name] if existing is None else [], list(cast_paths), draft_with)
        card = existing if existing is not None else drafted[name]
        if existing is None:
            save_card(card, outs.temp("persona.json"))
        rep.card = f"kept existing {card_path} (use --force to redraft)" if existing is not None else f"drafted {card_path}"
        rep.outputs = {name: str(outs.final(name)) for name in [*outs.names, "report.json"]}
        outs.temp("report.json").write_text(rep.to_json(), encoding="utf-8")
        written = outs.commit()
    if existing is not None:
        written["persona.json"] = card_path
    written.update({f"cards/{p.name}": save_card(drafted[n], p) for n, p in cast_paths.items() if n in drafted})
    return PrepareResult(out_dir, rep, written, card)


def _title(src: ScriptSource) -> str:
    return src.path.stem.replace("_", " ")


class Sinks:
    """Where the pass writes: the character's examples (spooled until the splits are known), the wide table, the cast."""

    def __init__(self, outs: OutputSet, title: str, context: int, wide_csv: bool, cast: int):
        self.context = context
        self.examples = Spool(outs.scratch("examples.jsonl"))
        self._wide_fh = outs.temp("wide.csv").open("w", encoding="utf-8", newline="") if wide_csv else None
        self.cast = CastExamples(outs.scratch("cast.jsonl"), title, cast, USER_PLACEHOLDER) if cast else None
        if self._wide_fh:
            self._wide = csv.writer(self._wide_fh)
            self._wide.writerow(wide_header(context))

    def example(self, messages: list[dict], before: list[Line], line: Line, where: Where) -> None:
        self.examples.add(messages, line, before, where)
        if self._wide_fh:
            self._wide.writerow(wide_row(before, line, self.context))

    def __enter__(self) -> Sinks:
        return self

    def __exit__(self, *exc) -> None:
        self.examples.close()
        if self._wide_fh:
            self._wide_fh.close()
        if self.cast is not None:
            self.cast.close()


class Reading:
    """One pass over the script: every row is classified and counted, and the character's lines become examples."""

    def __init__(self, src: ScriptSource, names: SpeakerNames, character: str, existing: CharacterCard | None, sinks: Sinks, spool: LineSpool):
        self.src, self.names, self.existing, self.sinks, self.spool = src, names, existing, sinks, spool
        self.char_key = names.key(character)
        self.tally = Tally()
        self.units = Units()
        self.window = ContextWindow(sinks.context)
        self.entered: tuple[str, set[str]] = ("", set())  # the current episode and who has spoken in it
        self.name: str | None = None  # the character as the script spells it, from its first usable line
        self.first_line = ""
        self.system = ""

    def run(self, on_read: Callable[[int], None] | None) -> None:
        scene, stem, cols = 0, self.src.path.stem, self.src.columns
        # The split's units (splits.py): episodes where a column names them; scenes where a scene column or
        # (with no episode column) empty rows mark them.
        has_episode, has_scene = bool(cols.whole_episode), cols.scene is not None or not cols.episode
        for raw in iter_rows(self.src, on_read):
            speaker = self.names(raw.speaker)
            row = classify(raw, speaker, raw.episode or (stem if scene == 0 else f"{stem} / scene {scene}"))
            is_char = bool(speaker) and speaker.casefold() == self.char_key
            self.tally.row(row, is_char)
            if row.line is None:
                # Without an episode column, an all-empty row is the only scene break there is
                # (the Kaggle Simpsons export leaves one where a scene heading was).
                scene += row.dropped == DROP_EMPTY_ROW and not self.src.columns.episode
                continue
            before = self.window.before(row.line)
            where = Where(raw.whole_episode if has_episode else None, row.line.episode if has_scene else None, raw.line_no)
            self._spool(before, row.line, where)
            if is_char:
                self._reply(before, row.line, where)
            elif self.sinks.cast is not None:
                self.sinks.cast.add(before, row.line, where)
            self.window.push(row.line)

    def _spool(self, before: list[Line], line: Line, where: Where) -> None:
        episode, seen = self.entered
        if episode != line.episode:
            self.entered = episode, seen = line.episode, set()
        prev = before[-1] if before else None
        self.spool.add(DraftLine(line.episode, line.speaker, line.text, prev.speaker if prev else "", prev.text if prev else "", line.speaker not in seen, where))
        seen.add(line.speaker)

    def _reply(self, before: list[Line], line: Line, where: Where) -> None:
        self.tally.character_episodes.add(line.episode)
        if self.name is None:
            self.name, self.first_line = line.speaker, line.text
            card = self.existing or stub_card(line.speaker, _title(self.src))
            self.system = render(card, USER_PLACEHOLDER).system
        messages = to_messages(self.system, self.name, before, line)
        if messages is None:
            self.tally.skipped[NO_CONTEXT] += 1
            return
        self.sinks.example(messages, before, line, where)
        self.tally.episode_examples[line.episode] += 1
        self.units.add(where)


def _check(src: ScriptSource, character: str, reading: Reading) -> str:
    """The character's name as the script spells it, once it is sure there is something to train on."""
    tally = reading.tally
    if tally.rows_read == 0:
        raise ScriptError(str(src.path), "has a header but no rows", "add one line of dialogue per row under the header")
    if tally.character_rows_raw == 0:
        raise _unknown_character(src, character, tally.lines)
    if reading.name is None:
        raise ScriptError(
            str(src.path), f"{normalize_speaker(character)!r} has {tally.character_rows_raw} rows but none with usable dialogue (empty or stage directions only)",
            "check --line-col points at the dialogue column",
        )
    if not tally.episode_examples:
        raise ScriptError(
            str(src.path), f"no examples: none of {reading.name}'s {tally.lines[reading.name]} lines follows another speaker's line in the same episode",
            "use a script where the character answers other speakers (or check --episode-col)",
        )
    return reading.name


def _write_splits(paths: dict[str, Path], sinks: Sinks, tally: Tally, units: Units) -> dict[str, set[str]]:
    """Each spooled example to its unit's split; the cast (if any) after the character's own training examples.
    Returns the episodes each split has examples from."""
    episodes: dict[str, set[str]] = {split: set() for split in SPLITS}
    with ExitStack() as stack:
        files = {split: stack.enter_context(paths[split].open("w", encoding="utf-8", newline="\n")) for split in SPLITS}
        for spooled in sinks.examples:
            split, placed = units.place(spooled)
            if placed is None:
                tally.skipped[CUT_CONTEXT] += 1
                continue
            files[split].write(placed.text())
            episodes[split].add(placed.episode)
            tally.example(split, dialogue_words(placed.record["messages"]))
        if sinks.cast is not None:
            tally.cast = sinks.cast.merge_into(files["train"], tally.lines, lambda spooled: _train_only(units, spooled))
    return episodes


def _train_only(units: Units, spooled):
    split, placed = units.place(spooled)
    return placed if split == "train" else None


def _draft_cards(src: ScriptSource, rep: PrepareReport, reading: Reading, units: Units, main: list[str], cast: list[str], draft_with) -> dict[str, CharacterCard]:
    """The cards asked for, drafted from the training episodes' lines (and redrafted by `draft_with`)."""
    reading.spool.close()
    if not main and not cast:
        return {}
    drafts = CardDrafts(_title(src), [*main, *cast], reading.tally.lines, "episode" if src.columns.episode else "scene")
    drafts.run(reading.spool, lambda line: units.split_of(line.where) == "train")
    # a cast member heard only in held-out episodes gets no card: there is nothing to draft it from
    names = [*main, *(n for n in cast if drafts.habits[n].lines)]
    cards = {n: drafts.card(n, _notes(src, rep, n, reading.tally.lines[n]), reading.first_line if n in main else "") for n in names}
    if draft_with is None:
        return cards
    from charbot.prepare.model_draft import redraft_all

    return redraft_all({n: (c, drafts.sample(n)) for n, c in cards.items()}, draft_with)


def _notes(src: ScriptSource, rep: PrepareReport, name: str, lines: int) -> str:
    return (
        f"Drafted by `charbot prepare` from {src.path.name}: {rep.rows_read:,} rows read, {rep.rows_kept:,} kept; "
        f"{name} has {lines:,} lines; {rep.speakers:,} speakers in all (most lines: {', '.join(f'{n} {c:,}' for n, c in rep.top_speakers[:5])}). "
        "Everything here comes from the training episodes: the description and personality are measured, the example dialogue, "
        "greetings and lorebook lines are real lines from the script. Edit this card freely."
    )
