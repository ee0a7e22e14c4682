"""Perplexity of the character's real held-out reply given its context: exp(mean NLL over the reply's tokens)."""

from __future__ import annotations

import math

from charbot.dataset import IGNORE, Example, encode
from charbot.rendering import Renderer


def response_perplexity(model, tokenizer, renderer: Renderer, examples: list[Example], *, persona: bool = True, named: bool = False,
                        max_length: int = 2048) -> float:
    import torch

    total_nll, total_tokens = 0.0, 0
    model.eval()
    for ex in examples:
        msgs = [m for m in ex.messages if persona or m["role"] != "system"]
        # labels on the held-out reply only; with `named`, its "Name:" is context, as serving writes it
        ids, labels = encode(tokenizer, renderer, msgs, last_only=True, speaker=ex.speaker if named else None)
        ids, labels = ids[-max_length:], labels[-max_length:]  # a long persona prompt is kept whole up to this
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
