"""Which examples train, which tune (val) and which only measure (test): whole units of the script at a time.

A held-out reply is only unseen if nothing around it was trained on: the lines before it are the context of
the training examples next to it. So the script is cut into whole units and every unit goes to one split:
episodes when there are enough of them; else scenes, when the script marks them (a scene column, or the empty
rows of the Kaggle Simpsons export); else contiguous blocks of the script. Never single lines scattered
through a scene. With blocks, a context is cut where its block begins, so no example reaches into a
neighbouring block that may be held out.
"""

from __future__ import annotations

import bisect
import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

SPLITS = ("train", "val", "test")
HELD_OUT = ("val", "test")
# A unit kind is used when it has at least this many units per held-out split: with fewer (a trilogy split
# three ways), one held-out unit would take a third of the data or more.
UNITS_PER_HELD_OUT = 4
BLOCKS = 20  # contiguous blocks when nothing else will do: each about 5% of the character's examples


def val_score(unit: str) -> float:
    """Stable across runs, machines and Python versions (unlike hash())."""
    return int.from_bytes(hashlib.sha256(unit.encode("utf-8")).digest()[:8], "big") / 2**64


class Splits:
    """The one place that decides which split a unit belongs to.

    A unit's score (a hash of its name, uniform in [0, 1)) decides: under the validation fraction it is val, at
    or above 1 - the test fraction it is test, else train. The two held-out ranges sit at opposite ends, so
    changing one fraction never moves a unit between val and test: what a recipe was tuned on (val) cannot
    become the test by a change of --val-fraction, and val keeps the units it had before test existed.
    Over `units` (those with the character's examples) no requested split may come out empty: train first,
    then test, then val take one unit, the one nearest their score range, from a split that can spare it
    (test may take val's last one: what nobody tuned on comes first). A single unit always trains.
    """

    def __init__(self, units: Iterable[str], val_fraction: float, test_fraction: float = 0.0):
        self.fractions = {"val": val_fraction, "test": test_fraction}
        self.of = {u: self._by_score(u) for u in units}
        if len(self.of) < 2:
            self.of = dict.fromkeys(self.of, "train")
            return
        ranked = sorted(self.of, key=lambda u: (val_score(u), u))  # low scores lean to val, high ones to test
        if "train" not in self.of.values():
            bigger = max(HELD_OUT, key=lambda s: (len(self.units(s)), s == "test"))
            self._fill("train", ranked, [(bigger, -1 if bigger == "val" else 0, 1)], always=True)
        self._fill("test", ranked, [("train", -1, 2), ("val", -1, 1)])
        self._fill("val", ranked, [("train", 0, 2), ("test", 0, 2)])

    def _fill(self, split: str, ranked: list[str], donors: list[tuple[str, int, int]], always: bool = False) -> None:
        """With `split` requested and empty, move one unit into it: from the first donor split holding at least
        its minimum, the unit at its end nearest `split`'s range (index 0: lowest score, -1: highest)."""
        if not (always or self.fractions[split] > 0) or split in self.of.values():
            return
        for donor, end, minimum in donors:
            pool = [u for u in ranked if self.of[u] == donor]
            if len(pool) >= minimum:
                self.of[pool[end]] = split
                return

    def _by_score(self, unit: str) -> str:
        score = val_score(unit)
        if score < self.fractions["val"]:
            return "val"
        return "test" if score >= 1.0 - self.fractions["test"] else "train"

    def __call__(self, unit: str) -> str:
        # A unit without the character's examples goes by its score alone, so --cast takes nothing held out.
        return self.of.get(unit) or self._by_score(unit)

    def units(self, split: str) -> list[str]:
        return [u for u, s in self.of.items() if s == split]


@dataclass(frozen=True)
class Where:
    """Where a line sits in the script: its episode (None when the script has no episode column), its scene
    (None when scenes are not marked), and its row."""

    episode: str | None
    scene: str | None
    line_no: int

    def to_list(self) -> list:
        return [self.episode, self.scene, self.line_no]

    @classmethod
    def from_list(cls, v: list) -> Where:
        return cls(v[0], v[1], int(v[2]))


@dataclass
class Units:
    """Counts the character's examples per episode and per scene during the pass, then picks the unit kind."""

    episodes: Counter[str] = field(default_factory=Counter)
    scenes: Counter[str] = field(default_factory=Counter)
    rows: list[int] = field(default_factory=list)  # each example's row, in script order
    kind: str = ""
    cuts: list[int] = field(default_factory=list)  # block starts (rows), with kind "block"
    splits: Splits | None = None

    def add(self, where: Where) -> None:
        if where.episode is not None:
            self.episodes[where.episode] += 1
        if where.scene is not None:
            self.scenes[where.scene] += 1
        self.rows.append(where.line_no)

    def choose(self, val_fraction: float, test_fraction: float) -> Splits:
        needed = UNITS_PER_HELD_OUT * sum(f > 0 for f in (val_fraction, test_fraction))
        if self.episodes and len(self.episodes) >= needed:
            self.kind, names = "episode", list(self.episodes)
        elif self.scenes and len(self.scenes) >= needed:
            self.kind, names = "scene", list(self.scenes)
        else:
            n = len(self.rows)
            count = min(BLOCKS, n)
            # Each block starts right after the previous block's last reply: the first reply of a block keeps
            # what was said to it, and no reply is context in another block.
            self.cuts = [0] + [self.rows[i * n // count - 1] + 1 for i in range(1, count)]
            self.kind, names = "block", [self._block(i) for i in range(count)]
        self.splits = Splits(names, val_fraction, test_fraction)
        return self.splits

    @staticmethod
    def _block(i: int) -> str:
        return f"block {i + 1}"

    def of(self, where: Where) -> str:
        """The unit a line belongs to (lines before the first block start belong to the first block)."""
        if self.kind == "episode":
            return where.episode or ""
        if self.kind == "scene":
            return where.scene or ""
        return self._block(max(0, bisect.bisect_right(self.cuts, where.line_no) - 1))

    def split_of(self, where: Where) -> str:
        assert self.splits is not None, "choose() first"
        return self.splits(self.of(where))

    def place(self, spooled):
        """The split of a spooled example (examples.Spooled), and the example itself: with blocks, its context
        cut where its block begins (None when that leaves no one to answer)."""
        assert self.splits is not None, "choose() first"
        unit = self.of(spooled.where)
        if self.kind == "block":
            spooled = spooled.cut_before(lambda line: self.of(Where(None, None, line.line_no)) == unit)
        return self.splits(unit), spooled

    def describe(self) -> str:
        return {"episode": "whole episodes", "scene": "whole scenes (too few episodes)",
                "block": f"{len(self.cuts)} contiguous blocks of the script (too few episodes, no scene marks)"}[self.kind]
