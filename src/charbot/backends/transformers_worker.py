"""The transformers model's worker thread, with dynamic batching: requests that arrive while the model is busy
are generated together in the next `generate` call (left-padded, one row each), up to `max_batch`.

Rows share one `generate` call, so they must share its sampling settings: requests with different ones, or with
a seed (a seeded sample must not depend on its batch neighbours), go in later batches. Stop strings, length
caps and cancellation are per row (`RowStops`); text streams per row (`RowStreamer`).
"""

from __future__ import annotations

from collections import Counter

from charbot.backends.base import Completion
from charbot.backends.worker import ModelWorker, Request
from charbot.generation import GenerationSettings


def batch_key(s: GenerationSettings) -> tuple | None:
    """Requests with equal keys can share a `generate` call; None: only alone."""
    if s.seed is not None:
        return None
    sampling = (s.temperature, s.top_k, s.top_p) if s.do_sample else ()
    return (s.do_sample, sampling, s.no_repeat_ngram_size, s.repetition_penalty, s.ignore_eos)


class Row:
    """One request's share of a batch: its tokens so far, when it finished, the text it has streamed."""

    def __init__(self, req: Request, tokenizer, eos_ids: set[int]):
        self.req = req
        self.tok = tokenizer
        self.eos_ids = eos_ids
        self.tokens: list[int] = []
        self.finished: str | None = None  # "stop" | "length" | "cancelled"
        self.streamed = ""

    def push(self, token: int) -> None:
        if self.finished is not None:
            return
        if token in self.eos_ids:
            self.finished = "stop"
            return
        self.tokens.append(token)

    def text(self) -> str:
        return self.tok.decode(self.tokens, skip_special_tokens=True)

    def check(self) -> bool:
        """True once this row needs no more tokens."""
        if self.finished is None:
            s = self.req.settings
            if self.req.cancelled.is_set():
                self.finished = "cancelled"
            elif s.stop and any(stop and stop in self.text() for stop in s.stop):
                self.finished = "stop"
            elif len(self.tokens) >= s.max_new_tokens:
                self.finished = "length"
        return self.finished is not None

    def final(self) -> Completion:
        text = self.text()
        cut = min((text.find(stop) for stop in self.req.settings.stop if stop and stop in text), default=-1)
        if cut >= 0:
            text = text[:cut]
        return Completion(text, len(self.tokens), len(self.req.tokens), self.finished or "length")


class RowStops:
    """A stopping criterion with one verdict per row (transformers stops a row when its verdict is True)."""

    def __init__(self, rows: list[Row]):
        self.rows = rows

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.tensor([row.check() for row in self.rows], dtype=torch.bool, device=input_ids.device)


class RowStreamer:
    """Receives each step's new tokens from `generate` and streams every row's new text to its own caller."""

    def __init__(self, rows: list[Row]):
        self.rows = rows
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate first hands over the prompt ids
            self.prompt_seen = True
            return
        for row, token in zip(self.rows, value.reshape(len(self.rows), -1)[:, -1].tolist()):
            if row.finished is not None:
                continue
            row.push(token)
            text = row.text()
            # hold back a partial multi-byte character until it is complete
            if not text.endswith("\ufffd") and len(text) > len(row.streamed) and text.startswith(row.streamed):
                row.req.emit(text[len(row.streamed) :])
                row.streamed = text

    def end(self) -> None:
        pass


class TransformersWorker(ModelWorker):
    """Owns the model and tokenizer; one `generate` call per batch."""

    def __init__(self, model, tokenizer, device: str, max_batch: int):
        super().__init__("transformers")
        self.model = model
        self.tok = tokenizer
        self.device = device
        self.max_batch = max(1, max_batch)
        self.batch: list[Request] = []
        self.batch_sizes: Counter[int] = Counter()  # how many rows each generate call had

    def running(self) -> int:
        return len(self.batch)

    def admit(self) -> None:
        if self.batch or not self.waiting:
            return
        first = self.waiting.popleft()
        batch = [first]
        key = batch_key(first.settings)
        if key is not None:
            for req in list(self.waiting):
                if len(batch) >= self.max_batch:
                    break
                if batch_key(req.settings) == key:
                    self.waiting.remove(req)
                    batch.append(req)
        self.batch = [r for r in batch if not r.cancelled.is_set()]

    def step(self) -> None:
        try:
            if self.batch:
                self.batch_sizes[len(self.batch)] += 1
                self.run_batch(self.batch)
        finally:
            self.batch = []

    def drop_running(self, error: BaseException) -> None:
        batch, self.batch = self.batch, []
        for req in batch:
            req.emit(error)

    def generate_kwargs(self, s: GenerationSettings, max_new_tokens: int) -> dict:
        """What one batch shares; stop strings and length caps are per request (RowStops)."""
        kw = dict(
            max_new_tokens=max_new_tokens, do_sample=s.do_sample, no_repeat_ngram_size=s.no_repeat_ngram_size or None,
            repetition_penalty=s.repetition_penalty, pad_token_id=self.tok.pad_token_id, eos_token_id=self.tok.eos_token_id,
        )
        if s.ignore_eos:  # transformers suppresses EOS until min_new_tokens are out
            kw["min_new_tokens"] = max_new_tokens
        if s.do_sample:
            kw.update(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)
        return kw

    def run_batch(self, reqs: list[Request]) -> None:
        import torch
        from transformers import StoppingCriteriaList

        tok = self.tok
        width = max(len(r.tokens) for r in reqs)
        pad = tok.pad_token_id
        # Left padding: every row's next token comes at the same column; the mask hides the padding.
        input_ids = torch.tensor([[pad] * (width - len(r.tokens)) + r.tokens for r in reqs], device=self.device)
        mask = torch.tensor([[0] * (width - len(r.tokens)) + [1] * len(r.tokens) for r in reqs], device=self.device)
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tok.eos_token_id}
        eos_ids.discard(None)
        rows = [Row(r, tok, set() if r.settings.ignore_eos else eos_ids) for r in reqs]
        kw = self.generate_kwargs(reqs[0].settings, max(r.settings.max_new_tokens for r in reqs))
        with torch.inference_mode():
            if reqs[0].settings.seed is not None:
                torch.manual_seed(reqs[0].settings.seed)
            self.model.generate(
                input_ids=input_ids, attention_mask=mask, stopping_criteria=StoppingCriteriaList([RowStops(rows)]),
                streamer=RowStreamer(rows), **kw,
            )
        for row in rows:
            completion = row.final()
            if completion.text.startswith(row.streamed) and len(completion.text) > len(row.streamed):
                row.req.emit(completion.text[len(row.streamed) :])
            row.req.emit(completion)
