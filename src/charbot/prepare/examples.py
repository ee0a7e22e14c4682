"""Turn a character's lines (with the lines before them, inside one episode) into chat-format training examples."""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from charbot.rendering import merged_turns, speaker_text

SPLITS = ("train", "val")


@dataclass(frozen=True)
class Line:
    speaker: str
    text: str
    episode: str
    line_no: int
    words: int


def to_messages(system: str, character: str, context: list[Line], target: Line) -> list[dict] | None:
    """System, then strictly alternating user/assistant turns ending in the character's line.

    Other speakers are `user` turns written "Name: text"; the character's own earlier lines are `assistant`
    turns. Chat templates such as Llama-2's and Gemma's reject a conversation that does not start with a
    user turn or that has two assistant turns in a row, so leading/trailing own lines are left out.
    Returns None when no other speaker precedes the line (nothing to answer).
    """
    # Named and joined by the same rules serving uses (rendering.py), so a model trains on what it is sent.
    turns = merged_turns(
        ("assistant", line.text) if line.speaker == character else ("user", speaker_text(line.text, line.speaker)) for line in context
    )
    while turns and turns[0].role == "assistant":
        turns.pop(0)
    if turns and turns[-1].role == "assistant":
        turns.pop()
    if not turns:
        return None
    messages = [{"role": "system", "content": system}]
    messages += [{"role": t.role, "content": t.content} for t in turns]
    messages.append({"role": "assistant", "content": target.text})
    return messages


def dialogue_words(messages: list[dict]) -> int:
    """Words in an example's turns, the system message left out (the report's size estimate)."""
    return sum(len(m["content"].split()) for m in messages[1:])


def example_record(messages: list[dict], target: Line) -> str:
    return json.dumps(
        {"messages": messages, "episode": target.episode, "speaker": target.speaker, "source_line": target.line_no},
        ensure_ascii=False,
    )


def wide_row(context: list[Line], target: Line, n: int) -> list[str]:
    """The tutorial's table: response, context (the line just before), context/0 … context/{n-2} (further back)."""
    before = [line.text for line in reversed(context)] + [""] * n
    return [target.text, *before[:n]]


def wide_header(n: int) -> list[str]:
    return ["response", "context", *(f"context/{i}" for i in range(n - 1))]


def val_score(episode: str) -> float:
    """Stable across runs, machines and Python versions (unlike hash())."""
    return int.from_bytes(hashlib.sha256(episode.encode("utf-8")).digest()[:8], "big") / 2**64


class Splits:
    """The one place that decides which split an episode belongs to.

    An episode is held out when its score falls under the validation fraction. Over `episodes` (those with the
    character's examples), neither split may come out empty: with two or more of them and a fraction above 0,
    the episode nearest the boundary crosses over; a single episode always trains.
    """

    def __init__(self, episodes: Iterable[str], val_fraction: float):
        self.val_fraction = val_fraction
        self.of = {e: self._by_score(e) for e in episodes}
        nearest = sorted(self.of, key=lambda e: (val_score(e), e))
        if len(self.of) < 2:
            self.of = dict.fromkeys(self.of, "train")
        elif val_fraction > 0 and "val" not in self.of.values():
            self.of[nearest[0]] = "val"
        elif "train" not in self.of.values():
            self.of[nearest[-1]] = "train"

    def _by_score(self, episode: str) -> str:
        return "val" if val_score(episode) < self.val_fraction else "train"

    def __call__(self, episode: str) -> str:
        # An episode without the character's examples goes by its score alone, so --cast takes nothing held out.
        return self.of.get(episode) or self._by_score(episode)

    def episodes(self, split: str) -> list[str]:
        return [e for e, s in self.of.items() if s == split]


class Spool:
    """Examples parked in a scratch JSONL file until the pass is over and it is known where each one goes."""

    def __init__(self, path: Path):
        self.path = path
        self._fh = path.open("w", encoding="utf-8", newline="\n")

    def add(self, messages: list[dict], target: Line) -> None:
        self._fh.write(example_record(messages, target) + "\n")

    def close(self) -> None:
        self._fh.close()

    def __iter__(self) -> Iterator[tuple[str, dict]]:
        """Each example as its JSONL line (newline included) and the parsed record."""
        self.close()
        with self.path.open(encoding="utf-8", newline="\n") as fh:
            for text in fh:
                yield text, json.loads(text)


class ContextWindow:
    """The last n lines of the current episode; a new episode starts with an empty window."""

    def __init__(self, n: int):
        self.lines: deque[Line] = deque(maxlen=n)
        self.episode: str | None = None

    def before(self, line: Line) -> list[Line]:
        if line.episode != self.episode:
            self.lines.clear()
            self.episode = line.episode
        return list(self.lines)

    def push(self, line: Line) -> None:
        self.lines.append(line)
