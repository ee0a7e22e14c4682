"""Prepared examples → token ids with labels on the character's lines only (everything else is -100).

Spans are found in text, not tokens (`Renderer.spans`): each assistant turn runs from the end of the prompt
serving would send for it to the end of the conversation rendered through it, so the labels follow whatever
chat template the model has, end-of-turn marker included.
"""

from __future__ import annotations

from charbot.dataset import IGNORE, Example, encode
from charbot.errors import ConfigError
from charbot.rendering import Renderer


def tokenize_example(tokenizer, renderer: Renderer, messages: list[dict], max_length: int, last_only: bool = False,
                     speaker: str | None = None) -> dict | None:
    """Token ids and labels; drops the oldest context turns (never the system message) until it fits."""
    msgs = list(messages)
    while True:
        ids, labels = encode(tokenizer, renderer, msgs, last_only=last_only, speaker=speaker)
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


def build_dataset(tokenizer, renderer: Renderer, examples: list[Example], max_length: int, drop_system: bool = False,
                  last_only: bool = False, name_replies: bool = False):
    from datasets import Dataset

    rows = []
    for ex in examples:
        msgs = [m for m in ex.messages if not (drop_system and m["role"] == "system")]
        row = tokenize_example(tokenizer, renderer, msgs, max_length, last_only, ex.speaker if name_replies else None)
        if row is not None:
            row["length"] = len(row["input_ids"])
            rows.append(row)
    if not rows:
        raise ConfigError("no training example has any of the character's tokens left", "raise --max-length")
    return Dataset.from_list(rows)
