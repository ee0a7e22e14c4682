"""Prepared chat JSONL → token ids with labels on the character's lines only (everything else is -100).

Spans are found in text, not tokens: each assistant message's characters run from the end of the
prompt rendered up to it (with the generation prompt) to the end of the prompt rendered through it,
so the labels follow whatever chat template the model has, end-of-turn marker included.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from charbot.errors import ConfigError
from charbot.prompt import speaker_text

IGNORE = -100
ROLES = ("system", "user", "assistant")


@dataclass
class Example:
    messages: list[dict]
    episode: str = ""
    speaker: str = ""


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
            out.append(Example(msgs, str(obj.get("episode", "")), str(obj.get("speaker", ""))))
    if not out:
        raise ConfigError(f"{path} has no examples", "prepare more data or check the character name")
    return out


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def resolve_format(tokenizer, prompt_format: str) -> str:
    if prompt_format == "auto":
        return "chat" if has_chat_template(tokenizer) else "dialogpt"
    if prompt_format == "chat" and not has_chat_template(tokenizer):
        raise ConfigError("prompt_format chat: this tokenizer has no chat template", "use --prompt-format dialogpt (turns joined by EOS)")
    return prompt_format


def render_spans(tokenizer, messages: list[dict], fmt: str, speaker: str | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The full training text and the character spans of every assistant message (with its end marker).

    With `speaker`, the character's turns are shown as "Speaker: line", like the other speakers' turns and
    like the Discord prompt; the name is context, the span starts after it."""
    if fmt == "dialogpt":
        # The tutorial's format: utterances joined by EOS, no names, no system message.
        eos = tokenizer.eos_token
        text, spans = "", []
        for m in messages:
            if m["role"] == "system":
                continue
            start = len(text)
            text += m["content"] + eos
            if m["role"] == "assistant":
                spans.append((start, len(text)))
        return text, spans
    if speaker:
        messages = named_replies(messages, speaker)
    offset = len(speaker_text("", speaker).rstrip())  # past "Speaker:": the span starts at the space after it
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not full.startswith(through) or not through.startswith(before):
            raise ConfigError("the chat template does not render conversations incrementally", "use --prompt-format dialogpt or a ChatML-style template")
        spans.append((len(before) + offset, len(through)))
    return full, spans


def named_replies(messages: list[dict], speaker: str) -> list[dict]:
    """The character's turns as "Speaker: line", rendered as the Discord prompt renders them."""
    return [{**m, "content": speaker_text(m["content"], speaker)} if m["role"] == "assistant" else m for m in messages]


def encode(tokenizer, messages: list[dict], fmt: str, last_only: bool = False, speaker: str | None = None) -> tuple[list[int], list[int]]:
    text, spans = render_spans(tokenizer, messages, fmt, speaker)
    if last_only:
        spans = spans[-1:]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for tok, (a, _b) in zip(enc["input_ids"], enc["offset_mapping"]):
        inside = any(s <= a < e for s, e in spans)
        labels.append(tok if inside else IGNORE)
    return list(enc["input_ids"]), labels


def tokenize_example(tokenizer, messages: list[dict], fmt: str, max_length: int, last_only: bool = False, speaker: str | None = None) -> dict | None:
    """Token ids and labels; drops the oldest context turns (never the system message) until it fits."""
    msgs = list(messages)
    while True:
        ids, labels = encode(tokenizer, msgs, fmt, last_only, speaker)
        if len(ids) <= max_length:
            break
        first = 1 if msgs[0]["role"] == "system" else 0
        if len(msgs) - first > 2:
            del msgs[first]
            continue
        ids, labels = ids[-max_length:], labels[-max_length:]  # one huge turn: keep its end
        break
    if all(label == IGNORE for label in labels):
        return None
    return {"input_ids": ids, "labels": labels}


def build_dataset(tokenizer, examples: list[Example], fmt: str, max_length: int, drop_system: bool = False, last_only: bool = False,
                  name_replies: bool = False):
    from datasets import Dataset

    rows = []
    for ex in examples:
        msgs = [m for m in ex.messages if not (drop_system and m["role"] == "system")]
        row = tokenize_example(tokenizer, msgs, fmt, max_length, last_only, ex.speaker if name_replies else None)
        if row is not None:
            row["length"] = len(row["input_ids"])
            rows.append(row)
    if not rows:
        raise ConfigError("no training example has any of the character's tokens left", "raise --max-length")
    return Dataset.from_list(rows)


def load_prepared(directory: Path) -> tuple[list[Example], list[Example], Path | None]:
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"data directory {directory} not found", "run `charbot prepare SCRIPT --character NAME -o DIR` first")
    train = load_jsonl(directory / "train.jsonl")
    val_path = directory / "val.jsonl"
    val = load_jsonl(val_path) if val_path.is_file() else []
    persona = directory / "persona.json"
    return train, val, persona if persona.is_file() else None
