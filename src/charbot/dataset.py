"""Prepared chat data (`charbot prepare`'s JSONL), read and tokenized the same way by training and evaluation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from charbot.cards import find_card
from charbot.errors import ConfigError
from charbot.rendering import Renderer

IGNORE = -100
ROLES = ("system", "user", "assistant")


@dataclass
class Example:
    messages: list[dict]
    episode: str = ""
    speaker: str = ""
    source_line: int = 0  # the reply's row in the script (0: not recorded)


def load_jsonl(path: Path) -> list[Example]:
    """Read a prepared JSONL file; any malformed line is a one-line error naming file and line."""
    if not path.is_file():
        raise ConfigError(f"{path} not found", "run `charbot prepare` first, or pass the directory it wrote")
    out: list[Example] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{where}: not valid JSON ({exc.msg})", "re-run `charbot prepare` or fix the line") from None
            msgs = obj.get("messages") if isinstance(obj, dict) else None
            if not isinstance(msgs, list) or not msgs:
                raise ConfigError(f"{where}: no 'messages' list", 'each line must be {"messages": [{"role": ..., "content": ...}, ...]}')
            for i, m in enumerate(msgs):
                if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                    raise ConfigError(f"{where}: message {i} needs a role (system/user/assistant) and string content", "fix the line")
            if msgs[-1]["role"] != "assistant":
                raise ConfigError(f"{where}: the last message must be the character's line (role assistant)", "fix the line")
            line = obj.get("source_line")
            out.append(Example(msgs, str(obj.get("episode", "")), str(obj.get("speaker", "")), line if isinstance(line, int) else 0))
    if not out:
        raise ConfigError(f"{path} has no examples", "prepare more data or check the character name")
    return out


def load_prepared(directory: Path) -> tuple[list[Example], list[Example], Path | None]:
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"data directory {directory} not found", "run `charbot prepare SCRIPT --character NAME -o DIR` first")
    train = load_jsonl(directory / "train.jsonl")
    val = load_held_out(directory, "val")
    return train, val, find_card(directory)


def load_held_out(directory: Path, split: str) -> list[Example]:
    """val.jsonl or test.jsonl; [] when absent or empty (`prepare` writes an empty one for a fraction of 0)."""
    path = Path(directory) / f"{split}.jsonl"
    if not path.is_file() or path.stat().st_size == 0:
        return []
    return load_jsonl(path)


def encode(tokenizer, renderer: Renderer, messages: list[dict], *, last_only: bool = False, speaker: str | None = None) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation, with labels on the character's turns (the last one only, with
    `last_only`) and IGNORE everywhere else."""
    text, spans = renderer.spans(messages, speaker)
    if last_only:
        spans = spans[-1:]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [tok if any(s <= a < e for s, e in spans) else IGNORE for tok, (a, _b) in zip(enc["input_ids"], enc["offset_mapping"])]
    return list(enc["input_ids"]), labels
