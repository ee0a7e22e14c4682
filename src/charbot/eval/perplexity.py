"""Perplexity of the character's real held-out reply given its context: exp(mean NLL over the reply's tokens)."""

from __future__ import annotations

import math

from charbot.train.data import IGNORE, Example, render_spans


def reply_labels(tokenizer, messages: list[dict], fmt: str, speaker: str | None = None) -> tuple[list[int], list[int]]:
    """Token ids with labels on the final (held-out) reply only (with `speaker`, its "Name:" is context)."""
    text, spans = render_spans(tokenizer, messages, fmt, speaker)
    start, end = spans[-1]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [t if start <= a < end else IGNORE for t, (a, _b) in zip(enc["input_ids"], enc["offset_mapping"])]
    return list(enc["input_ids"]), labels


def response_perplexity(model, tokenizer, examples: list[Example], fmt: str, *, persona: bool = True, named: bool = False, max_length: int = 512) -> float:
    import torch

    total_nll, total_tokens = 0.0, 0
    model.eval()
    for ex in examples:
        msgs = [m for m in ex.messages if persona or m["role"] != "system"]
        ids, labels = reply_labels(tokenizer, msgs, fmt, ex.speaker if named else None)
        ids, labels = ids[-max_length:], labels[-max_length:]
        with torch.inference_mode():
            logits = model(torch.tensor([ids])).logits[0, :-1].float()
        target = torch.tensor(labels[1:])
        mask = target != IGNORE
        if not mask.any():
            continue
        nll = torch.nn.functional.cross_entropy(logits[mask], target[mask], reduction="sum")
        total_nll += float(nll)
        total_tokens += int(mask.sum())
    return math.exp(total_nll / total_tokens) if total_tokens else float("nan")
