"""Character cards drafted offline from the script alone (`prepare` writes persona.json; `--cast` a card per cast
member): who the character talks with and about, in which episodes; speech habits measured against the cast
and signature phrases (signature.py); the most characteristic real exchanges as example dialogue; greetings
from real scene openings; a lorebook of recurring names (lore_draft.py).

Everything comes from the training episodes only, so a card never shows a held-out line. Lines reach the
drafter through a spool of at most MAX_LINES_PER_SPEAKER lines per speaker (all of them in ordinary scripts),
which keeps the two drafting passes short and memory flat on any script.

The one-line `stub_card` is the persona of the training examples' system messages; it stays as it was, so
the training data does not change with the drafted card.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from charbot.persona import CardData, CharacterCard
from charbot.prepare.lore_draft import LoreLines, NameFinder, key_of, vocative
from charbot.prepare.signature import DOC_MIN_LINES, NgramStats
from charbot.prepare.splits import Where
from charbot.prepare.style import Habits, compare, is_real_line, words_of

MAX_LINES_PER_SPEAKER = 5000
MAX_EXAMPLE_WORDS = 40  # an example or greeting is a line, not a speech
EXAMPLES, GREETINGS = 4, 3


def description_for(character: str, title: str) -> str:
    return f"{character}, a character from {title}."


def stub_card(character: str, title: str) -> CharacterCard:
    return CharacterCard(data=CardData(name=character, description=description_for(character, title)))


@dataclass(frozen=True)
class DraftLine:
    episode: str
    speaker: str
    text: str
    before: str  # the speaker of the line just before, in the same episode ("" when it opens it)
    before_text: str
    enters: bool  # the speaker's first line in the episode (or scene)
    where: Where  # which split's unit it is in (splits.py)


class LineSpool:
    """The lines the drafter reads, parked in a scratch file during the pass (the split is not known yet)."""

    def __init__(self, path: Path):
        self.path = path
        self.kept: Counter[str] = Counter()
        self._fh = path.open("w", encoding="utf-8", newline="\n")

    def add(self, line: DraftLine) -> None:
        if self.kept[line.speaker] < MAX_LINES_PER_SPEAKER:
            self.kept[line.speaker] += 1
            fields = [line.episode, line.speaker, line.text, line.before, line.before_text, line.enters, line.where.to_list()]
            self._fh.write(json.dumps(fields, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self._fh.close()

    def __iter__(self) -> Iterator[DraftLine]:
        self.close()
        with self.path.open(encoding="utf-8") as fh:
            for text in fh:
                *fields, where = json.loads(text)
                yield DraftLine(*fields, Where.from_list(where))


class _Best:
    """The top `n` items by score, ties broken by text (deterministic)."""

    def __init__(self, n: int):
        self.n, self.heap = n, []

    def offer(self, score: float, *item) -> None:
        entry = (score, *item)
        if len(self.heap) < self.n:
            heapq.heappush(self.heap, entry)
        elif entry > self.heap[0]:
            heapq.heapreplace(self.heap, entry)

    def ranked(self) -> list[tuple]:
        return sorted(self.heap, reverse=True)


class CardDrafts:
    def __init__(self, title: str, targets: list[str], lines: Counter[str], unit: str = "episode"):
        self.title, self.targets, self.unit = title, set(targets), unit  # unit: "scene" where the script has no episodes
        self.ngrams = NgramStats({s for s, n in lines.items() if n >= DOC_MIN_LINES})
        # names are measured as "calls X by name", not as signature words
        self.name_words = {w for s in self.ngrams.documents for w in words_of(s)}
        self.names = NameFinder(set(lines))
        self.cast = Habits()
        self.habits = {t: Habits() for t in targets}
        self.partners = {t: Counter() for t in targets}
        self.about = {t: Counter() for t in targets}
        self.addressed = {t: Counter() for t in targets}
        self.episodes: dict[str, dict[str, None]] = {t: {} for t in targets}
        self.exchanges = {t: _Best(24) for t in targets}
        self.openers = {t: _Best(12) for t in targets}
        self.lore: LoreLines | None = None

    def run(self, spool: LineSpool, keep: Callable[[DraftLine], bool]) -> None:
        """Two passes over the spooled lines that `keep` accepts (the training split's): count, then choose."""
        for line in spool:
            if keep(line):
                self._count(line, words_of(line.text))
        self.lore = LoreLines(self.names.recurring(), self.names)
        for line in spool:
            if keep(line):
                self._choose(line, words_of(line.text))

    def _count(self, line: DraftLine, words: list[str]) -> None:
        self.ngrams.add(line.speaker, words, line.episode)
        self.names.add(line.text, line.episode)
        self.cast.add(line.text, words)
        if line.speaker in self.targets:
            self.habits[line.speaker].add(line.text, words)
            self.episodes[line.speaker][line.episode] = None
            if line.before and line.before != line.speaker:
                self.partners[line.speaker][line.before] += 1
        if line.before in self.targets and line.before != line.speaker:
            self.partners[line.before][line.speaker] += 1

    def _choose(self, line: DraftLine, words: list[str]) -> None:
        self.lore.add(line.speaker, line.text, line.episode, len(words))
        if line.speaker not in self.targets:
            return
        who = line.speaker
        for key, spelled, _ in self.names.runs(line.text):
            if key in self.lore.names and key != key_of(who):
                (self.addressed if vocative(line.text, spelled) else self.about)[who][spelled] += 1
        if not is_real_line(line.text, words) or len(words) > MAX_EXAMPLE_WORDS:
            return
        score = self.ngrams.distinctiveness(who, words)
        if line.before and line.before != who and 2 <= len(line.before_text.split()) <= MAX_EXAMPLE_WORDS:
            self.exchanges[who].offer(score, line.text, line.episode, line.before_text)
        if line.enters:
            self.openers[who].offer(score + (0.5 if not line.before else 0.0), line.text, line.episode)

    def card(self, name: str, notes: str, fallback_greeting: str) -> CharacterCard:
        habits = self.habits[name]
        own = {key_of(name), *(key_of(w) for w in name.split())}
        signature = self.ngrams.signature(name, exclude=self.name_words)
        examples = _spread(self.exchanges[name].ranked(), EXAMPLES)
        greetings = [text for _, text, _ in _spread(self.openers[name].ranked(), GREETINGS)] or [fallback_greeting]
        mes_example = "\n".join(f"<START>\n{{{{user}}}}: {before}\n{{{{char}}}}: {text}" for _, text, _, before in examples)
        book = self.lore.lorebook(self.title, own, name) if self.lore else None
        personality, figures = self._personality(name, habits, signature)
        return CharacterCard(
            spec="chara_card_v3", spec_version="3.0",
            data=CardData(
                name=name, description=self._description(name), personality=personality,
                first_mes=greetings[0], alternate_greetings=greetings[1:], mes_example=mes_example, creator_notes=notes + figures,
                tags=["charbot-prepare"], creator="charbot prepare", character_version="2",
                character_book=book if book is not None and book.entries else None, group_only_greetings=[],
                extensions={"charbot": {"source": self.title, "traits": habits.as_dict(), "cast_traits": self.cast.as_dict(), "signature": signature}},
            ),
        )

    def sample(self, name: str, n: int = 12) -> list[str]:
        """The speaker's most characteristic lines, for a model to read (`prepare --draft-with`)."""
        return [item[1] for item in self.exchanges[name].ranked()[:n]]

    def _description(self, name: str) -> str:
        episodes = list(self.episodes[name])
        text = f"{name} is a character in {self.title}, in {len(episodes)} {self.unit}{'s' * (len(episodes) != 1)} of the script"
        if self.unit == "episode":
            text += " (" + ", ".join(episodes[:5]) + (f" and {len(episodes) - 5} more" if len(episodes) > 5 else "") + ")"
        text += "."
        partners = [f"{who} ({n} exchange{'s' * (n != 1)})" for who, n in self.partners[name].most_common(3)]
        if partners:
            text += f" {name} talks most with {_listed(partners)}."
        about = [who for who, _ in self.about[name].most_common(4)]
        if about:
            text += f" {name} talks most often about {_listed(about)}."
        return text

    def _personality(self, name: str, habits: Habits, signature: list[str]) -> tuple[str, str]:
        """The personality text (plain phrases: a model reads it) and the figures behind it (for the notes)."""
        traits = compare(habits, self.cast)
        called = self.addressed[name].most_common(1)
        if called and habits.lines and called[0][1] / habits.lines >= 0.05:
            traits.append((f"calls {called[0][0]} by name a lot", f"names {called[0][0]} in {called[0][1] / habits.lines:.0%} of lines"))
        phrases = [phrase for phrase, _ in traits]
        text = f"{name} {_listed(phrases)}." if phrases else ""
        if signature:
            text += f" Favourite words and phrases: {', '.join(f'“{s}”' for s in signature)}."
        figures = "; ".join(f for _, f in traits)
        return text.strip(), f" Measured against the rest of the cast: {figures}." if figures else ""


def _spread(ranked: list[tuple], n: int) -> list[tuple]:
    """The best `n`, one per episode first (for variety), then the next best."""
    chosen, seen = [], set()
    for item in ranked:
        if item[2] not in seen and len(chosen) < n:
            chosen.append(item)
            seen.add(item[2])
    chosen += [item for item in ranked if item not in chosen][: n - len(chosen)]
    return sorted(chosen, key=ranked.index)


def _listed(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" and {items[-1]}"
