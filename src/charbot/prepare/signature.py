"""Signature words and phrases, and how characteristic a line is, from n-gram counts per speaker.

Each speaker with enough lines is one document (the others share one); an n-gram counts once per line.
Signature phrases are ranked by TF-IDF over those documents (tf: the share of the speaker's lines that use
it; idf: ln((1 + documents) / (1 + documents using it)) + 1, as scikit-learn smooths it), must be used at
least twice as often by the speaker as by the rest of the cast, and in more than one episode. A line's distinctiveness is the sum of its
n-grams' log-odds (the speaker against everyone else, add-half smoothed; n-grams the speaker used only once
count nothing) over the square root of its length in content words. Counters are capped: when one grows
past its cap, its rarest entries are dropped (the counts of frequent n-grams, the ones that matter, stay
nearly exact), so memory stays bounded on any script.
"""

from __future__ import annotations

import math
from collections import Counter

from charbot.prepare.style import content_words, ngrams

DOC_MIN_LINES = 5  # fewer lines than this and a speaker joins the shared "everyone else" document
CAP = 60_000
OTHERS = "\0others"


class Capped(Counter):
    def bump(self, keys, cap: int = CAP) -> None:
        self.update(keys)
        if len(self) > cap:
            floor = 1
            while len(self) > cap * 0.8:
                for key in [k for k, c in self.items() if c <= floor]:
                    del self[key]
                floor += 1


class NgramStats:
    def __init__(self, documents: set[str]):
        self.documents = documents
        self.by_doc: dict[str, Capped] = {}
        self.total = Capped()
        self.lines: Counter[str] = Counter()
        self.spread: dict[str, Capped] = {}  # per document: in how many episodes each n-gram was used
        self._episode: dict[str, tuple[str, set[str]]] = {}  # per document: the current episode, its n-grams so far

    def doc(self, speaker: str) -> str:
        return speaker if speaker in self.documents else OTHERS

    def add(self, speaker: str, words: list[str], episode: str) -> None:
        grams = ngrams(words)
        doc = self.doc(speaker)
        self.by_doc.setdefault(doc, Capped()).bump(grams)
        self.total.bump(grams, CAP * 4)
        self.lines[doc] += 1
        current, seen = self._episode.get(doc, ("", set()))
        if current != episode:
            current, seen = episode, set()
            self._episode[doc] = (current, seen)
        self.spread.setdefault(doc, Capped()).bump(grams - seen)
        seen |= grams

    def _log_odds(self, doc: str, gram: str) -> float:
        own = self.by_doc[doc][gram]
        if own < 2:
            return 0.0
        n_own, n_rest = self.lines[doc], sum(self.lines.values()) - self.lines[doc]
        rest = max(self.total[gram] - own, 0)
        return math.log((own + 0.5) / (n_own + 0.5)) - math.log((rest + 0.5) / (n_rest + 0.5))

    def distinctiveness(self, speaker: str, words: list[str]) -> float:
        doc = self.doc(speaker)
        if doc not in self.by_doc:
            return 0.0
        size = len(content_words(words)) or 1
        return sum(self._log_odds(doc, g) for g in ngrams(words, 2)) / math.sqrt(size)

    def signature(self, speaker: str, n: int = 8, exclude: set[str] = frozenset()) -> list[str]:
        """The speaker's `n` most characteristic words and phrases, longest phrase first where they overlap."""
        doc = self.doc(speaker)
        own = self.by_doc.get(doc)
        if not own or doc == OTHERS:
            return []
        n_docs = len(self.by_doc)
        n_own, n_rest = self.lines[doc], sum(self.lines.values()) - self.lines[doc]
        spread, episodes = self.spread[doc], max(self.spread[doc].values(), default=1)
        scored = []
        for gram, count in own.items():
            words = gram.split()
            if count < (3 if len(words) == 1 else 2) or set(words) & exclude or (len(words) == 1 and len(gram) < 3):
                continue
            if episodes >= 3 and spread[gram] < 2:
                continue  # a word of one scene ("seeds"), not of the character
            rest = max(self.total[gram] - count, 0)
            if n_rest and count / n_own < 2 * rest / n_rest:
                continue
            df = sum(gram in c for c in self.by_doc.values())
            tfidf = count / n_own * (math.log((1 + n_docs) / (1 + df)) + 1)
            scored.append((tfidf * math.sqrt(len(words)), gram))
        chosen: list[str] = []
        for _, gram in sorted(scored, key=lambda t: (-t[0], t[1])):
            padded = f" {gram} "
            if any(padded in f" {c} " or f" {c} " in padded for c in chosen):
                continue
            chosen.append(gram)
            if len(chosen) == n:
                break
        return chosen
