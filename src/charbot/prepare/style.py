"""How a speaker talks, measured: words and n-grams of a line, and per-speaker habits (line length, questions,
exclamations, stutters, trailing off, naming people) compared with the rest of the cast."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)*")
_STUTTER = re.compile(r"\b(\w{1,3})-(?:\1-)*\1?\w*", re.IGNORECASE)
_TRAIL = re.compile(r"(\.\.\.|…|--)\s*$|(\.\.\.|…)\s")
STOPWORDS = frozenset(
    "a about above after again against all am an and any are aren't as at be because been before being below between both but by "
    "can can't cannot could couldn't did didn't do does doesn't doing don't down during each few for from further had hadn't has "
    "hasn't have haven't having he he'd he'll he's her here here's hers herself him himself his how how's i i'd i'll i'm i've if in "
    "into is isn't it it's its itself let's me more most mustn't my myself no nor not of off on once only or other ought our ours "
    "ourselves out over own same shan't she she'd she'll she's should shouldn't so some such than that that's the their theirs "
    "them themselves then there there's these they they'd they'll they're they've this those through to too under until up very "
    "was wasn't we we'd we'll we're we've were weren't what what's when when's where where's which while who who's whom why why's "
    "with won't would wouldn't you you'd you'll you're you've your yours yourself yourselves just like get got go going gonna "
    "know yeah oh ok okay uh um well hey yes now right really come want one see look say said think thing things tell make "
    "back also even still way wanna gotta ah huh hmm mm".split()
)


def words_of(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def content_words(words: list[str]) -> list[str]:
    """Words that carry meaning: not stopwords, at least three letters."""
    return [w for w in words if w not in STOPWORDS and len(w) >= 3 and not w.isdigit()]


def ngrams(words: list[str], longest: int = 3) -> set[str]:
    """The line's distinct 1..`longest`-grams that are not only stopwords (each counted once per line)."""
    out = set()
    for n in range(1, longest + 1):
        for i in range(len(words) - n + 1):
            gram = words[i : i + n]
            if any(w not in STOPWORDS and len(w) >= 3 for w in gram):
                out.add(" ".join(gram))
    return out


def is_real_line(text: str, words: list[str], least: int = 6) -> bool:
    """Several words, most of them different and meaningful: not an interjection ("Ooh! Ohh! Ooh!")."""
    return len(words) >= least and len(set(words)) >= 0.6 * len(words) and len(set(content_words(words))) >= 3


def stutters(text: str) -> list[str]:
    """Repeated starts like "I-I", "w-what", "M-M-Morty"."""
    found = []
    for m in _STUTTER.finditer(text):
        head, rest = m.group(1).lower(), m.group(0).lower().split("-")
        if len(rest) >= 2 and all(part.startswith(head) or head.startswith(part) for part in rest[:-1]) and rest[-1].startswith(head[0]):
            found.append(m.group(0))
    return found


@dataclass
class Habits:
    """One speaker's measured habits over the lines seen."""

    lines: int = 0
    words: int = 0
    questions: int = 0
    exclamations: int = 0
    stutter_lines: int = 0
    trailing: int = 0
    stutter_examples: list[str] = field(default_factory=list)

    def add(self, text: str, words: list[str]) -> None:
        self.lines += 1
        self.words += len(words)
        self.questions += "?" in text
        self.exclamations += "!" in text
        self.trailing += bool(_TRAIL.search(text))
        found = stutters(text)
        if found:
            self.stutter_lines += 1
            if len(self.stutter_examples) < 6 and found[0] not in self.stutter_examples:
                self.stutter_examples.append(found[0])

    def share(self, name: str) -> float:
        return getattr(self, name) / self.lines if self.lines else 0.0

    @property
    def mean_words(self) -> float:
        return self.words / self.lines if self.lines else 0.0

    def as_dict(self) -> dict:
        return {"lines": self.lines, "mean_words": round(self.mean_words, 1), **{k: round(self.share(k), 3) for k in SHARES}}


SHARES = {
    "questions": ("asks a lot of questions", "rarely asks questions"),
    "exclamations": ("exclaims a lot", "rarely exclaims"),
    "stutter_lines": ("stutters", ""),
    "trailing": ("trails off or breaks off mid-sentence", ""),
}


def compare(own: Habits, cast: Habits) -> list[tuple[str, str]]:
    """The habits that set a speaker apart from the cast: (a phrase for the card, the figures behind it)."""
    traits = []
    ratio = own.mean_words / cast.mean_words if cast.mean_words else 1.0
    if ratio >= 1.2 or ratio <= 0.8:
        kind = "speaks in long, talkative lines" if ratio > 1 else "speaks in short, clipped lines"
        traits.append((kind, f"{own.mean_words:.1f} words a line, the cast {cast.mean_words:.1f}"))
    for name, (more, less) in SHARES.items():
        mine, theirs = own.share(name), cast.share(name)
        figures = f"{name.replace('_lines', 's')} in {mine:.0%} of lines, the cast {theirs:.0%}"
        if mine >= max(1.3 * theirs, theirs + 0.03) and mine >= 0.05:
            examples = f" ({', '.join(repr(s) for s in own.stutter_examples[:3])})" if name == "stutter_lines" and own.stutter_examples else ""
            traits.append((more + examples, figures))
        elif less and theirs >= 0.05 and mine <= 0.7 * theirs:
            traits.append((less, figures))
    return traits
