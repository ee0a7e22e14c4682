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
