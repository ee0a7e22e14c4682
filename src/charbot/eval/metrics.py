"""Reply diversity and length: distinct-n is unique n-grams over all n-grams across every reply."""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


def words(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def distinct_n(replies: list[str], n: int) -> float:
    grams = [tuple(w[i : i + n]) for w in map(words, replies) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def mean_length(replies: list[str]) -> float:
    return sum(len(words(r)) for r in replies) / len(replies) if replies else 0.0


def distinct_by_round(replies: list[list[str]], n: int) -> float:
    """distinct-n of each round of draws (one reply per context), averaged over the rounds. Pooling the rounds
    would count a context's replies repeating one another, so a model sampled more often would look less diverse."""
    rounds = [[per_context[k] for per_context in replies if k < len(per_context)] for k in range(max(map(len, replies), default=0))]
    return sum(distinct_n(draws, n) for draws in rounds) / len(rounds) if rounds else 0.0
