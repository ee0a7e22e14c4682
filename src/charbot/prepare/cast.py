"""The rest of the cast as extra training data (`prepare --cast N`).

A few hundred lines of one character is little text to learn a show from. Every other speaker's line, framed
the same way with that speaker's own one-line persona, teaches the model the show's names, words and rhythm;
the character's own lines still carry the persona because each example's system message says who is talking.
Only training units (splits.py) contribute: nothing from a held-out episode, scene or block is ever trained on.

Cast examples are collected during the single pass over the script (speaker totals are not known until its
end) and merged into train.jsonl afterwards, once the episode split is final.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from charbot.persona import render
from charbot.prepare.card import stub_card
from charbot.prepare.examples import Line, Spool, Spooled, dialogue_words, to_messages
from charbot.prepare.splits import Where


class CastExamples:
    def __init__(self, path: Path, title: str, min_lines: int, user_placeholder: str):
        self.title = title
        self.min_lines = min_lines
        self.user = user_placeholder
        self._systems: dict[str, str] = {}
        self._spool = Spool(path)

    def add(self, before: list[Line], line: Line, where: Where) -> None:
        system = self._systems.get(line.speaker)
        if system is None:
            card = stub_card(line.speaker, self.title)
            system = self._systems[line.speaker] = render(card, self.user).system
        messages = to_messages(system, line.speaker, before, line)
        if messages is not None:
            self._spool.add(messages, line, before, where)

    def close(self) -> None:
        self._spool.close()

    def merge_into(self, train: TextIO, lines: Counter[str], in_train: Callable[[Spooled], Spooled | None]) -> dict[str, int]:
        """Write the examples of speakers with at least `min_lines` lines, from training units only, to `train`
        (`in_train`: the example as it goes to train, or None when its unit is held out). Returns what the
        report says about them."""
        examples, words, speakers = 0, 0, set()
        for spooled in self._spool:
            if lines[spooled.record["speaker"]] < self.min_lines or (placed := in_train(spooled)) is None:
                continue
            train.write(placed.text())
            examples += 1
            speakers.add(placed.record["speaker"])
            words += dialogue_words(placed.record["messages"])
        return {"min_lines": self.min_lines, "speakers": len(speakers), "examples": examples, "words": words}
