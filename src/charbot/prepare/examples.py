"""Turn a character's lines (with the lines before them, inside one episode) into chat-format training examples."""

from __future__ import annotations

import hashlib
import json
from collections import deque
from dataclasses import dataclass


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
    turns: list[list[str]] = []
    for line in context:
        role = "assistant" if line.speaker == character else "user"
        content = line.text if role == "assistant" else f"{line.speaker}: {line.text}"
        if turns and turns[-1][0] == role:
            turns[-1][1] += "\n" + content
        else:
            turns.append([role, content])
    while turns and turns[0][0] == "assistant":
        turns.pop(0)
    if turns and turns[-1][0] == "assistant":
        turns.pop()
    if not turns:
        return None
    messages = [{"role": "system", "content": system}]
    messages += [{"role": r, "content": c} for r, c in turns]
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
