"""Dynamic batching for the transformers backend: requests that arrive while the model is busy are generated
together in the next `generate` call (left-padded, one row each), up to `max_batch`.

Rows share one `generate` call, so they must share its sampling settings: requests with different ones, or with
a seed (a seeded sample must not depend on its batch neighbours), go in later batches. Stop strings, length
caps and cancellation are per row (`RowStops`); text streams per row (`RowStreamer`).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import AsyncIterator

from charbot.backends._threads import WorkerRequest, worker_results
from charbot.backends.base import Completion
from charbot.errors import BackendError
from charbot.generation import GenerationSettings

_DONE = object()




def batch_key(s: GenerationSettings) -> tuple | None:
    """Requests with equal keys can share a `generate` call; None: only alone."""
    if s.seed is not None:
        return None
    sampling = (s.temperature, s.top_k, s.top_p) if s.do_sample else ()
    return (s.do_sample, sampling, s.no_repeat_ngram_size, s.repetition_penalty)


class Row:
    """One request's share of a batch: its tokens so far, when it finished, the text it has streamed."""

    def __init__(self, job: WorkerRequest, tokenizer, eos_ids: set[int]):
        self.job = job
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
            s = self.job.settings
            if self.job.cancelled.is_set():
                self.finished = "cancelled"
            elif s.stop and any(stop and stop in self.text() for stop in s.stop):
                self.finished = "stop"
            elif len(self.tokens) >= s.max_new_tokens:
                self.finished = "length"
        return self.finished is not None

    def final(self) -> Completion:
        text = self.text()
        cut = min((text.find(stop) for stop in self.job.settings.stop if stop and stop in text), default=-1)
        if cut >= 0:
            text = text[:cut]
        return Completion(text, len(self.tokens), len(self.job.tokens), self.finished or "length")


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
                row.job.emit(text[len(row.streamed) :])
                row.streamed = text

    def end(self) -> None:
        pass


class Batcher:
    """The worker thread in front of one transformers model."""

    def __init__(self, backend, max_batch: int):
        self.backend = backend
        self.max_batch = max(1, max_batch)
        self.jobs: deque[WorkerRequest] = deque()
        self.running = 0
        self.batches = 0
        self.cond = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name="transformers-batch", daemon=True)
        self.thread.start()

    @property
    def active(self) -> int:
        return self.running + len(self.jobs)

    async def run(self, job: WorkerRequest) -> AsyncIterator[str | Completion]:
        with self.cond:
            if self.closed:
                raise BackendError("the transformers backend is closed")
            self.jobs.append(job)
            self.cond.notify()
        async for item in worker_results(job.queue, job.cancelled):
            yield item

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()
        self.thread.join(timeout=60)

    def _take(self) -> list[WorkerRequest] | None:
        with self.cond:
            while not self.closed and not self.jobs:
                self.cond.wait()
            if self.closed:
                while self.jobs:
                    self.jobs.popleft().emit(BackendError("the transformers backend was closed"))
                return None
            first = self.jobs.popleft()
            batch = [first]
            key = batch_key(first.settings)
            if key is not None:
                for job in list(self.jobs):
                    if len(batch) >= self.max_batch:
                        break
                    if batch_key(job.settings) == key:
                        self.jobs.remove(job)
                        batch.append(job)
            self.running = len(batch)
            self.batches += 1
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            batch = [j for j in batch if not j.cancelled.is_set()]
            try:
                if batch:
                    self.generate(batch)
            except BaseException as exc:  # handed to the callers, raised there; the worker goes on
                for job in batch:
                    job.emit(exc)
            finally:
                self.running = 0

    def generate(self, jobs: list[WorkerRequest]) -> None:
        import torch
        from transformers import StoppingCriteriaList

        b = self.backend
        tok = b.tokenizer
        width = max(len(j.tokens) for j in jobs)
        pad = tok.pad_token_id
        # Left padding: every row's next token comes at the same column; the mask hides the padding.
        input_ids = torch.tensor([[pad] * (width - len(j.tokens)) + j.tokens for j in jobs], device=b.device)
        mask = torch.tensor([[0] * (width - len(j.tokens)) + [1] * len(j.tokens) for j in jobs], device=b.device)
        eos = b.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tok.eos_token_id}
        eos_ids.discard(None)
        rows = [Row(j, tok, eos_ids) for j in jobs]
        kw = b._generate_kwargs(jobs[0].settings)
        kw["max_new_tokens"] = max(j.settings.max_new_tokens for j in jobs)
        with b._lock, torch.inference_mode():
            if jobs[0].settings.seed is not None:
                torch.manual_seed(jobs[0].settings.seed)
            b.model.generate(
                input_ids=input_ids, attention_mask=mask, stopping_criteria=StoppingCriteriaList([RowStops(rows)]),
                streamer=RowStreamer(rows), **kw,
            )
        for row in rows:
            completion = row.final()
            if completion.text.startswith(row.streamed) and len(completion.text) > len(row.streamed):
                row.job.emit(completion.text[len(row.streamed) :])
            row.job.emit(completion)
