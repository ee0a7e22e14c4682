"""Draft a Character Card V2 from the character's real lines: example dialogue, first message and source stats."""

from __future__ import annotations

import heapq
import math
import re
from collections import Counter
from dataclasses import dataclass

from charbot.persona import CardData, CharacterCard

_WORD = re.compile(r"[a-z']+")
IDEAL_WORDS = 14
KEEP = 400


def words_of(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class Candidate:
    prompt: str  # the other speaker's line just before
    reply: str
    episode: str
    opener: bool  # the character's first line in its episode


class CardDrafter:
    """Keeps a bounded, deterministic pool of mid-length lines, then ranks it by how characteristic the words are."""

    def __init__(self, character: str):
        self.character = character
        self.all_words: Counter[str] = Counter()
        self.char_words: Counter[str] = Counter()
        self._pool: list[tuple[float, str, Candidate]] = []
        self._replies: set[str] = set()

    def observe(self, text: str, is_char: bool) -> None:
        ws = words_of(text)
        self.all_words.update(ws)
        if is_char:
            self.char_words.update(ws)

    def offer(self, candidate: Candidate, words: int) -> None:
        if words < 4 or words > 45:
            return
        if candidate.reply in self._replies:
            return  # catchphrases repeat; one copy is enough for an example
        item = (float(-abs(words - IDEAL_WORDS)), candidate.reply, candidate)
        if len(self._pool) < KEEP:
            heapq.heappush(self._pool, item)
        elif item[:2] > self._pool[0][:2]:
            self._replies.discard(heapq.heapreplace(self._pool, item)[1])
        else:
            return
        self._replies.add(candidate.reply)

    def _distinct(self, text: str) -> float:
        n_all = sum(self.all_words.values()) or 1
        n_char = sum(self.char_words.values()) or 1
        scores = [
            math.log((self.char_words[w] / n_char) / (self.all_words[w] / n_all))
            for w in set(words_of(text))
            if self.all_words[w] >= 2
        ]
        return sum(scores) / len(scores) if scores else 0.0

    def ranked(self) -> list[Candidate]:
        scored = sorted(
            ((self._distinct(c.reply) + 0.03 * length, reply, c) for length, reply, c in self._pool),
            key=lambda t: (-t[0], t[1]),
        )
        return [c for _, _, c in scored]

    def pick(self, n_examples: int = 3) -> tuple[list[Candidate], Candidate | None]:
        ranked = self.ranked()
        chosen: list[Candidate] = []
        episodes: set[str] = set()
        for c in ranked:  # prefer one example per episode, for variety
            if len(chosen) < n_examples and c.episode not in episodes:
                chosen.append(c)
                episodes.add(c.episode)
        for c in ranked:
            if len(chosen) < n_examples and c not in chosen:
                chosen.append(c)
        rest = [c for c in ranked if c not in chosen]
        first = next((c for c in rest if c.opener), rest[0] if rest else None)
        return chosen, first

    def distinctive_words(self, n: int = 8) -> list[str]:
        n_all = sum(self.all_words.values()) or 1
        n_char = sum(self.char_words.values()) or 1
        scored = [
            ((c / n_char) / (self.all_words[w] / n_all), w)
            for w, c in self.char_words.items()
            if c >= 3 and len(w) > 3
        ]
        return [w for _, w in sorted(scored, key=lambda t: (-t[0], t[1]))[:n]]


def description_for(character: str, title: str) -> str:
    return f"{character}, a character from {title}."


def build_card(character: str, title: str, drafter: CardDrafter, notes: str, fallback_line: str) -> CharacterCard:
    examples, first = drafter.pick()
    mes_example = "\n".join(f"<START>\n{{{{user}}}}: {c.prompt}\n{{{{char}}}}: {c.reply}" for c in examples)
    words = drafter.distinctive_words()
    return CharacterCard(
        data=CardData(
            name=character,
            description=description_for(character, title),
            personality="",
            scenario="",
            first_mes=first.reply if first else fallback_line,
            mes_example=mes_example,
            creator_notes=notes,
            tags=["charbot-prepare"],
            creator="charbot prepare",
            character_version="1",
            extensions={"charbot": {"source": title, "distinctive_words": words}},
        )
    )
