"""A lorebook drafted from the script: the recurring proper nouns (people, places, things) named in more than
one episode, each keyed by the name and its spellings, with real lines that say what it is.

A proper noun is a capitalised word or run of them ("Council of Ricks") seen capitalised inside sentences and
rarely in lower case; speakers' names count too. Spellings are merged by their letters ("Bird Person",
"Birdperson", "Bird-Person"), titles aside ("Mr. Meeseeks" is "Meeseeks"). A line "says what it is" when it
names the thing in a defining frame ("X is a …", "X, the …", "called X"), and otherwise by length.
"""

from __future__ import annotations

import heapq
import re
from collections import Counter
from dataclasses import dataclass, field

from charbot.lorebook import LoreEntry, Lorebook
from charbot.prepare.signature import Capped

_WORD = r"(?:(?:Mr|Mrs|Ms|Dr|St|Jr|Sr)\.|[A-Z][\w'’-]*)"
_RUN = re.compile(rf"(?<![\w']){_WORD}(?:[ \t]+(?:of|the|de|van|von)[ \t]+{_WORD}|[ \t]+{_WORD})*")
_SENTENCE_START = re.compile(r"(^|[.!?…:\"“]\s*)$")
TITLES = frozenset(
    "mr mrs ms miss dr mister sir madam lord lady professor principal president captain agent officer general king queen prince "
    "princess grandpa grandma granny uncle aunt auntie cousin".split()
)
NOT_NAMES = frozenset(
    "i i'm i'll i've i'd ok okay oh god jesus christ hey tv uh um monday tuesday wednesday thursday friday saturday sunday "
    "january february march april may june july august september october november december english".split()
)
MAX_ENTRIES = 12
LINES_PER_ENTRY = 2
MAX_WORDS = 450  # the whole book's content
TOKEN_BUDGET = 500
OWN_BONUS = 1.5  # the card's own character's lines about a name come first, unless another line defines it better


def key_of(name: str) -> str:
    """Spellings of one name share a key: letters only, lower case, titles and possessives dropped."""
    name = re.sub(r"['’]s$", "", name)
    words = [w for w in re.split(r"[\s.-]+", name.lower()) if w]
    while len(words) > 1 and words[0] in TITLES:
        words = words[1:]
    return re.sub(r"[^a-z0-9]", "", "".join(words))


def _surface(name: str) -> str:
    name = re.sub(r"['’]s$", "", name).rstrip(".-'’")
    parts = name.split("-")  # a stutter ("M-Morty") is not a spelling
    while len(parts) > 1 and parts[1].lower().startswith(parts[0].lower()):
        parts = parts[1:]
    return "-".join(parts)


@dataclass
class Name:
    spellings: Counter = field(default_factory=Counter)
    episodes: set = field(default_factory=set)
    inside: int = 0  # capitalised inside a sentence
    mentions: int = 0


class NameFinder:
    """Pass one: which capitalised words and runs are names, where they occur and how they are spelled."""

    def __init__(self, speakers: set[str]):
        self.names: dict[str, Name] = {}
        self.lower = Capped()
        self.speaker_keys = {key_of(s) for s in speakers}

    def runs(self, text: str) -> list[tuple[str, str, bool]]:
        """(key, spelling, inside a sentence) for each capitalised run in `text`."""
        out = []
        for m in _RUN.finditer(text):
            spelled = _surface(m.group(0))
            if spelled.isupper() and len(spelled) > 1 or spelled.lower() in NOT_NAMES or spelled.lower().rstrip(".") in TITLES:
                continue
            key = key_of(spelled)
            if len(key) >= 2:
                out.append((key, spelled, not _SENTENCE_START.search(text[: m.start()])))
        return out

    def add(self, text: str, episode: str) -> None:
        self.lower.bump(re.sub(r"[^a-z0-9]", "", w) for w in re.findall(r"\b[a-z][a-z'’-]*", text))  # keyed as names are
        for key, spelled, inside in self.runs(text):
            if key not in self.names and len(self.names) > 50_000:
                continue  # a bound for pathological input; real scripts name far fewer things
            name = self.names.setdefault(key, Name())
            name.spellings[spelled] += 1
            name.mentions += 1
            name.inside += inside
            if len(name.episodes) < 1000:
                name.episodes.add(episode)

    def recurring(self, limit: int = 200) -> dict[str, Name]:
        """Names in more than one episode that are names (not a sentence's first word, not a common word)."""
        found = {}
        for key, name in self.names.items():
            if len(name.episodes) < 2:
                continue
            one_word = " " not in max(name.spellings, key=name.spellings.get)
            lower_uses = self.lower[key] if one_word else 0
            if lower_uses < 0.25 * max(name.inside, 1) and (key in self.speaker_keys or name.inside >= 2):
                found[key] = name
        for key, name in list(found.items()):  # "Morty Smith" is Morty, spelled in full ("Springfield Elementary" is not Springfield)
            first, *rest = max(name.spellings, key=name.spellings.get).split()
            if rest and key_of(first) in found and key_of(first) != key and all(key_of(w) in found for w in rest):
                found[key_of(first)].spellings.update(name.spellings)
                found[key_of(first)].episodes |= name.episodes
                del found[key]
        ranked = sorted(found.items(), key=lambda kv: (-len(kv[1].episodes), -kv[1].mentions, kv[0]))
        return dict(ranked[:limit])


_DEFINING = ("{n} is ", "{n} was ", "{n}'s a ", "{n} are ", "{n}, the ", "{n}, my ", "{n}, a ", "called {n}", "named {n}")


def vocative(text: str, spelled: str) -> bool:
    """The name is said to someone ("Morty, …", "…, Morty!") rather than about them."""
    at = text.find(spelled)
    after = text[at + len(spelled) : at + len(spelled) + 1]
    before = text[:at].rstrip()
    return after in (",", "!", "?") and (not before or before[-1] in ",.!?") or (before.endswith(",") and after in ("", ".", "!", "?"))


def defining_score(text: str, spelling: str, words: int) -> float:
    low, n = text.lower(), spelling.lower()
    score = -2.0 if vocative(text, spelling) else 3.0 if any(frame.format(n=n) in low for frame in _DEFINING) else 0.0
    score -= abs(words - 16) / 8  # a full sentence, not a shout and not a speech
    return score - (1.0 if text.rstrip().endswith("?") else 0.0)


class LoreLines:
    """Pass two: for each recurring name, the best lines that say what it is (from different episodes)."""

    def __init__(self, names: dict[str, Name], finder: NameFinder):
        self.names, self.finder = names, finder
        self.best: dict[str, list] = {key: [] for key in names}

    def add(self, speaker: str, text: str, episode: str, words: int) -> None:
        if not 5 <= words <= 40:
            return
        for key, spelled, _ in self.finder.runs(text):
            heap = self.best.get(key)
            if heap is None or any(line == text for _, _, _, line in heap):
                continue
            item = (defining_score(text, spelled, words), episode, speaker, text)
            if len(heap) < 12:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)

    def lorebook(self, title: str, exclude: set[str], character: str) -> Lorebook:
        """The book for `character`'s card: their own lines about each name first (the world as they see
        it), quoted in prose rather than as script lines, which a small model would carry on as a script."""
        entries, words = [], 0
        for key, name in self.names.items():
            if key in exclude or not self.best[key]:
                continue
            lines, episodes = [], set()
            for score, episode, speaker, text in sorted(self.best[key], key=lambda item: (item[0] + OWN_BONUS * (item[2] == character), item), reverse=True):
                if episode not in episodes and len(lines) < LINES_PER_ENTRY:
                    lines.append(f"{speaker} says: “{text}”")
                    episodes.add(episode)
            display = max(name.spellings, key=lambda s: (name.spellings[s], s))
            content = f"{display}, named in {len(name.episodes)} episodes. In the script, " + " And ".join(lines)
            size = len(content.split())
            if words + size > MAX_WORDS:
                continue
            words += size
            keys = sorted({s for s in name.spellings if name.spellings[s] >= 1}, key=lambda s: (-name.spellings[s], s))[:4]
            entries.append(LoreEntry(
                keys=keys, content=content, comment=display, insertion_order=100 + len(entries), enabled=True, constant=False,
                selective=False, use_regex=False, case_sensitive=False, position="after_char",
                extensions={"charbot": {"episodes": len(name.episodes), "mentions": name.mentions}},
            ))
            if len(entries) == MAX_ENTRIES:
                break
        return Lorebook(name=f"{title}: people, places and things", token_budget=TOKEN_BUDGET, entries=entries,
                        description="Drafted by charbot prepare: recurring names, with real lines that say what they are.")
