"""Response selection, as in ConvAI2 / PersonaChat: for each held-out context, the real reply among 19
distractors, ranked by the model; hits@1/20 (the real reply ranked first) and MRR (mean of 1 / its rank).

A catchphrase cannot win it: the model must prefer, for this context, the line the character actually said
over other lines of the character's from elsewhere in the test split.

Distractors are other test replies of the character (then, if those run short, other speakers' lines from
test contexts), never from the same conversation (episode or scene) nor within `NEAR_ROWS` rows of the
reply, drawn with a fixed seed per context.

Each candidate is scored by how much the context raises its likelihood: its mean log-probability per token
given the context minus the same given no dialogue (the prompt's system message and an empty user turn),
over exactly the tokens perplexity scores (the reply and its end-of-turn marker, rendered by the one
renderer): pointwise mutual information between context and reply, per token. The plain per-token mean is
reported beside it (`loglik_*`), but it measures a line's likelihood anywhere more than its fit here: on
Rick's validation episode (not test) it ranked the real reply first at chance, 0.05, for the base (plain and
persona-prompted) and the fine-tune alike, the fine-tune's first picks half as long as the average candidate
(10 tokens against 20: a short exclamation is likely after anything); the mutual information ranked it first
0.15, 0.18 and 0.20.
"""

from __future__ import annotations

import copy

import random
from dataclasses import dataclass

from charbot.dataset import IGNORE, Example, encode
from charbot.rendering import Renderer

CHUNK = 5  # candidates scored in one batch
CANDIDATES = 20
NEAR_ROWS = 20  # without scene marks, lines this close may be the same exchange going on


@dataclass
class Selection:
    hits_at_1: float
    mrr: float
    contexts: int
    candidates: int  # per context (fewer than 20 only when the test split is too small to draw from)
    ranks: list[int]  # the real reply's rank per context, 1 = first
    loglik_hits_at_1: float = float("nan")  # ranked by the plain per-token mean instead (the module says why not)
    loglik_mrr: float = float("nan")


def _other_lines(ex: Example) -> list[str]:
    return [line.partition(": ")[2].strip() for m in ex.messages if m["role"] == "user" for line in m["content"].splitlines() if ": " in line]


def _apart(a: Example, b: Example) -> bool:
    if a.episode != b.episode:
        return True
    return bool(a.source_line and b.source_line) and abs(a.source_line - b.source_line) > NEAR_ROWS


def candidate_sets(examples: list[Example], n: int = CANDIDATES, seed: int = 0, pool: list[Example] | None = None) -> list[list[str]]:
    """Per example: its real reply first, then up to n - 1 distractors drawn as the module says, from `pool`
    (default: the examples themselves; eval passes the whole test split when it scores only some of it)."""
    pool = examples if pool is None else pool
    sets = []
    for i, ex in enumerate(examples):
        real = ex.messages[-1]["content"]
        far = [other for other in pool if other is not ex and _apart(ex, other)]
        own = sorted({o.messages[-1]["content"] for o in far} - {real})
        rng = random.Random(seed * 1_000_003 + i)  # fixed per context, independent of the model
        picked = rng.sample(own, min(n - 1, len(own)))
        if len(picked) < n - 1:
            others = sorted({line for o in far for line in _other_lines(o) if line} - {real} - set(picked))
            picked += rng.sample(others, min(n - 1 - len(picked), len(others)))
        sets.append([real, *picked])
    return sets


def rank_of_first(scores: list[float]) -> int:
    """Rank of scores[0] among all (1 = best); ties count against it, so a constant scorer gets no credit."""
    return 1 + sum(s >= scores[0] for s in scores[1:])


def summarise(ranks: list[int], candidates: int) -> Selection:
    n = len(ranks)
    return Selection(sum(r == 1 for r in ranks) / n if n else float("nan"), sum(1 / r for r in ranks) / n if n else float("nan"),
                     n, candidates, ranks)


def mean_logprobs(model, tokenizer, renderer: Renderer, messages: list[dict], replies: list[str], *, named: str | None = None,
                  max_length: int = 512) -> list[float]:
    """Length-normalised log-likelihood of each reply as the last turn of `messages`.

    The candidates share the context: its tokens are read once, and only the replies after it, in batches of
    similar length (the context's keys and values repeated per row). The scores are those of reading each row
    whole (tests/test_selection.py compares them), for a fraction of the tokens read."""
    import torch

    rows = []
    for reply in replies:
        ids, labels = encode(tokenizer, renderer, [*messages[:-1], {"role": "assistant", "content": reply}], last_only=True, speaker=named)
        rows.append((ids[-max_length:], labels[-max_length:]))
    # the shared start: equal in every row, and before every row's first scored token
    shared = min(min(len(ids) for ids, _ in rows) - 1, min(next(i for i, t in enumerate(lab) if t != IGNORE) for _, lab in rows))
    first = rows[0][0]
    while shared > 0 and any(ids[:shared] != first[:shared] for ids, _ in rows):
        shared -= 1
    tails = [(ids[shared:], labels[shared:]) for ids, labels in rows]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores: list[float] = [0.0] * len(rows)
    with torch.inference_mode():
        head = model(input_ids=torch.tensor([first[:shared]]), use_cache=True, logits_to_keep=1) if shared else None
        # replies of similar length together: padding every row to the longest of all 20 would read more
        # padding than reply
        order = sorted(range(len(rows)), key=lambda i: len(tails[i][0]))
        for at in range(0, len(order), CHUNK):
            chunk = order[at:at + CHUNK]
            width = max(len(tails[i][0]) for i in chunk)
            input_ids = torch.tensor([tails[i][0] + [pad] * (width - len(tails[i][0])) for i in chunk])
            attention = torch.tensor([[1] * (shared + len(tails[i][0])) + [0] * (width - len(tails[i][0])) for i in chunk])
            targets = torch.tensor([tails[i][1] + [IGNORE] * (width - len(tails[i][1])) for i in chunk])
            if head is not None:
                cache = copy.deepcopy(head.past_key_values)
                cache.batch_repeat_interleave(len(chunk))
                out = model(input_ids=input_ids, attention_mask=attention, past_key_values=cache).logits
                # position `shared` is predicted by the shared start's last position
                logits = torch.cat([head.logits[:, -1:].expand(len(chunk), 1, -1), out[:, :-1]], dim=1).float()
            else:
                logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
                targets = targets[:, 1:]
            mask = targets != IGNORE
            logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            for i, value in zip(chunk, (logp * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)):
                scores[i] = float(value)
    return scores


def without_dialogue(messages: list[dict]) -> list[dict]:
    """The same prompt with nothing said: its system message (the persona, where the row has one), an empty
    user turn, then the reply."""
    return [m for m in messages if m["role"] == "system"] + [{"role": "user", "content": ""}, messages[-1]]


def response_selection(model, tokenizer, renderer: Renderer, examples: list[Example], *, persona: bool = True, named: bool = False,
                       seed: int = 0, sets: list[list[str]] | None = None) -> Selection:
    model.eval()
    sets = sets if sets is not None else candidate_sets(examples, seed=seed)
    ranks, loglik_ranks = [], []
    for ex, replies in zip(examples, sets):
        msgs = [m for m in ex.messages if persona or m["role"] != "system"]
        speaker = ex.speaker if named else None
        given = mean_logprobs(model, tokenizer, renderer, msgs, replies, named=speaker)
        alone = mean_logprobs(model, tokenizer, renderer, without_dialogue(msgs), replies, named=speaker)
        ranks.append(rank_of_first([g - a for g, a in zip(given, alone)]))
        loglik_ranks.append(rank_of_first(given))
    candidates = max(map(len, sets), default=0)
    result, loglik = summarise(ranks, candidates), summarise(loglik_ranks, candidates)
    result.loglik_hits_at_1, result.loglik_mrr = loglik.hits_at_1, loglik.mrr
    return result
