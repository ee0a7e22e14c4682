"""Generation settings (the tutorial's sampling defaults) and the clean-up every reply goes through."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field


class GenerationSettings(BaseModel):
    """How a reply is sampled. Defaults are the original tutorial's `model.generate(...)` arguments.

    The same model is the `generation` group of the settings (CHARBOT_TEMPERATURE, …) and what backends receive."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_new_tokens: int = Field(64, ge=1, le=8192, description="Cap on tokens generated per reply.")
    do_sample: bool = Field(True, description="Sample (true) or greedy decoding (false).")
    temperature: float = Field(0.8, ge=0.0, le=5.0, description="Sampling temperature.")
    top_k: int = Field(100, ge=0, le=100_000, description="Top-k sampling (0: off).")
    top_p: float = Field(0.7, gt=0.0, le=1.0, description="Top-p (nucleus) sampling.")
    no_repeat_ngram_size: int = Field(3, ge=0, le=64, description="Never repeat an n-gram of this size (0: off).")
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0, description="Penalty on tokens already generated (1: off).")
    seed: int | None = Field(None, description="Sampling seed for reproducible replies.")
    stop: tuple[str, ...] = Field((), description="Extra strings that end a reply.")
    # Benchmarks compare identical work: every side generates exactly max_new_tokens.
    ignore_eos: bool = Field(False, description="Keep generating past the end-of-sequence token (benchmarks).")

    def with_stop(self, *extra: str) -> GenerationSettings:
        return self.model_copy(update={"stop": tuple(dict.fromkeys((*self.stop, *extra)))})

    def but(self, **changes) -> GenerationSettings:
        """A copy with `changes`, validated like the original."""
        return GenerationSettings.model_validate({**self.model_dump(), **changes})


class NoRepeatNGram:
    """Tokens that would repeat an n-gram already generated (HF's `no_repeat_ngram_size`), kept incrementally.

    Only generated tokens count: chat prompts repeat their template markers, and banning those would stop
    the model from ever closing its turn.
    """

    def __init__(self, n: int):
        self.n = n
        self.tokens: list[int] = []
        self._seen: dict[tuple[int, ...], set[int]] = {}

    def push(self, token: int) -> None:
        self.tokens.append(token)
        if self.n > 0 and len(self.tokens) >= self.n:
            gram = tuple(self.tokens[-self.n :])
            self._seen.setdefault(gram[:-1], set()).add(gram[-1])

    def banned(self) -> set[int]:
        if self.n <= 0 or len(self.tokens) < self.n - 1:
            return set()
        prefix = tuple(self.tokens[len(self.tokens) - self.n + 1 :]) if self.n > 1 else ()
        return self._seen.get(prefix, set())


_WS = re.compile(r"[ \t]+")
_LINE_NAME = re.compile(r"(?:^|\n)\s*([^\n:]+?)\s*:")  # a line that begins "Name:"; group 1 is the name


def _norm(text: str) -> str:
    return re.sub(r"[\W_]+", " ", text.casefold()).strip()


def clean_reply(raw: str, *, char: str, user_names: tuple[str, ...] = (), stops: tuple[str, ...] = ()) -> str:
    """Cut at the next turn marker, drop a leading 'Char:' the model may echo, trim. May return ''."""
    text = raw
    for stop in stops:
        if stop and stop in text:
            text = text[: text.index(stop)]
    # A model writing the other side's next turn: "...\nUser: ..." or "...\nChar: ..."
    names = {n.casefold() for n in (*user_names, char) if n}
    if names:
        first = _LINE_NAME.match(text)
        if first and first.group(1).casefold() == char.casefold():
            text = text[first.end() :].lstrip()
        # one fixed pattern, the names compared as strings: a pattern per speaker would be compiled again for
        # every message once a server has more speakers than re's cache holds
        for m in _LINE_NAME.finditer(text):
            if m.group(1).casefold() in names:
                text = text[: m.start()]
                break
    lines = [_WS.sub(" ", line).strip() for line in text.strip().splitlines()]
    return "\n".join(line for line in lines if line).strip()


def is_usable(reply: str, user_text: str) -> bool:
    """A reply must say something, and not just hand the user's own words back."""
    if not _norm(reply):
        return False
    return _norm(reply) != _norm(user_text)


_SENTENCE_END = re.compile(r"[.!?…](?:[\"')\]]*)(?=\s|$)")


def trim_to_sentence(text: str, min_chars: int = 12) -> str:
    """A reply cut by the token cap ends mid-sentence; end it at the last full sentence when there is one."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    ends = [e for e in ends if e >= min_chars]
    return text[: ends[-1]].rstrip() if ends else text
