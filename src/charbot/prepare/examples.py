"""Turn a character's lines (with the lines before them, inside one episode) into chat-format training examples."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from charbot.prepare.splits import Where
from charbot.rendering import merged_turns, speaker_text

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


class Spool:
    """Examples parked in a scratch JSONL file until the pass is over and it is known where each one goes.

    Each record also keeps where its line sits and the lines before it, so an example can be rebuilt with a
    shorter context once the units of the split are known (splits.py); neither is written to the outputs."""

    def __init__(self, path: Path):
        self.path = path
        self._fh = path.open("w", encoding="utf-8", newline="\n")

    def add(self, messages: list[dict], target: Line, before: list[Line], where: Where) -> None:
        record = json.loads(example_record(messages, target))
        record[_BEFORE] = [[line.speaker, line.text, line.line_no, line.words] for line in before]
        record[_WHERE] = where.to_list()
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self._fh.close()

    def __iter__(self) -> Iterator[Spooled]:
        self.close()
        with self.path.open(encoding="utf-8", newline="\n") as fh:
            for text in fh:
                yield Spooled(json.loads(text))


_BEFORE, _WHERE = "_before", "_where"


class Spooled:
    """One spooled example: its record as `prepare` writes it, where it sits, and the lines before it."""

    def __init__(self, record: dict):
        self.before = [Line(s, t, record["episode"], n, w) for s, t, n, w in record.pop(_BEFORE)]
        self.where = Where.from_list(record.pop(_WHERE))
        self.record = record

    @property
    def episode(self) -> str:
        return self.record["episode"]

    def text(self) -> str:
        """The record's JSONL line, newline included."""
        return json.dumps(self.record, ensure_ascii=False) + "\n"

    def cut_before(self, keep) -> Spooled | None:
        """The example with only the context lines `keep(line)` accepts; None when no other speaker is left
        in it to answer. Unchanged (the same object) when every line is kept."""
        kept = [line for line in self.before if keep(line)]
        if len(kept) == len(self.before):
            return self
        msgs = self.record["messages"]
        target = Line(self.record["speaker"], msgs[-1]["content"], self.episode, self.record["source_line"], 0)
        messages = to_messages(msgs[0]["content"], self.record["speaker"], kept, target)
        if messages is None:
            return None
        cut = Spooled({**self.record, "messages": messages, _BEFORE: [], _WHERE: self.where.to_list()})
        cut.before = kept
        return cut


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
