"""llama.cpp: GGUF models on CPU, the default backend, with continuous batching.

One worker thread owns the model (llamacpp_model.py). Each step it decodes one batch made of (a) the next token
of every sequence that is generating and (b) prompt tokens of newly admitted sequences, up to `n_batch`, so a
long prompt never stalls the others for more than a step. `parallel` sequences run at once (1 by default: one
conversation at a time, as the tutorial served). A finished sequence keeps its KV cells: a new prompt goes to
the free sequence whose cells share the longest start with it (the persona's system prompt, or the whole
conversation so far when its next turn comes) and reads only the rest; a burst of prompts that share more with
each other than with any kept sequence reads the shared part once and copies it.
"""

from __future__ import annotations

import codecs
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from charbot.backends.base import Completion, Prompt
from charbot.backends.llamacpp_model import LlamaModel
from charbot.backends.worker import ModelWorker, Request, WorkerBackend
from charbot.chat_template import ChatTemplate
from charbot.generation import NoRepeatNGram
from charbot.models import check_gguf, embedded_model_path
from charbot.rendering import prompt_text

MIN_SHARED = 16  # tokens a prompt must share with one being read before it waits to copy them


@dataclass(eq=False)
class _Slot:
    seq: int
    req: Request
    sampler: object
    prompt: list[int]
    pending: list[int] = field(default_factory=list)  # prompt tokens not yet decoded
    pos: int = 0  # positions of this sequence already in the KV cache
    # (leader, n): this prompt's first n tokens are the leader's too; wait for the leader to decode them, then copy
    follow: tuple[_Slot, int] | None = None
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("ignore"))
    text: str = ""
    generated: int = 0
    next_token: int | None = None
    ngrams: NoRepeatNGram = field(init=False)

    def __post_init__(self) -> None:
        self.ngrams = NoRepeatNGram(self.req.settings.no_repeat_ngram_size)

    @property
    def reading(self) -> bool:
        return self.follow is not None or bool(self.pending)


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return min(n, len(a) - 1)  # the last prompt token must be decoded for its logits


class LlamaWorker(ModelWorker):
    def __init__(self, model: LlamaModel, *, parallel: int, n_ctx_per_seq: int):
        super().__init__("llama.cpp")
        self.m = model
        self.parallel = parallel
        self.n_ctx_per_seq = n_ctx_per_seq
        self.kept: dict[int, list[int]] = {}  # the tokens each free sequence's KV cells still hold
        self.slots: dict[int, _Slot] = {}
        self.most_sequences = 0  # the most sequences one decode step has carried (batching observed)

    def running(self) -> int:
        return len(self.slots)

    def admit(self) -> None:
        while self.waiting and len(self.slots) < self.parallel:
            req = self.waiting.popleft()
            if not req.cancelled.is_set():
                self._admit(req)

    def _admit(self, req: Request) -> None:
        s = req.settings
        tokens = req.tokens[-(self.n_ctx_per_seq - s.max_new_tokens - 1) :]
        seq, kept = self._best_free(tokens)
        seed = s.seed if s.seed is not None else random.getrandbits(31)
        slot = _Slot(seq, req, self.m.sampler(s, seed), tokens)
        # A burst of requests for one persona shares its system prompt: when no kept sequence holds it yet,
        # decode it once (in the first one's sequence) and copy the cells, rather than once per request.
        leader, shared = self._leader_for(tokens)
        if leader is not None and shared >= kept + MIN_SHARED:
            self.m.clear(seq)
            slot.follow = (leader, shared)
        else:
            self._resume(slot, kept)
        self.kept.pop(seq, None)
        self.slots[seq] = slot

    def _best_free(self, tokens: list[int]) -> tuple[int, int]:
        """The free sequence whose kept cells share the longest start with `tokens`, and that length."""
        shared = {s: _common(tokens, self.kept.get(s, [])) for s in range(self.parallel) if s not in self.slots}
        seq = max(shared, key=lambda s: (shared[s], -s))
        return seq, shared[seq]

    def _resume(self, slot: _Slot, keep: int) -> None:
        """Keep the first `keep` positions the slot's sequence holds; the rest of the prompt is read."""
        self.m.clear(slot.seq, keep)
        slot.pos = keep
        slot.pending = slot.prompt[keep:]

    def _leader_for(self, tokens: list[int]) -> tuple[_Slot | None, int]:
        """The sequence still reading a prompt that shares the longest prefix with `tokens`."""
        best, shared = None, 0
        for slot in self.slots.values():
            if slot.follow is None and slot.pending:
                n = _common(tokens, slot.prompt)
                if n > shared:
                    best, shared = slot, n
        return best, shared

    def _catch_up(self, slot: _Slot) -> None:
        leader, shared = slot.follow
        if self.slots.get(leader.seq) is not leader:  # the leader went away (cancelled): read the prompt alone
            slot.follow = None
            self._resume(slot, 0)
        elif leader.pos >= shared:
            self.m.copy(leader.seq, slot.seq, shared)
            slot.follow = None
            slot.pos = shared
            slot.pending = slot.prompt[shared:]

    def step(self) -> None:
        for slot in list(self.slots.values()):
            if slot.req.cancelled.is_set():
                self._finish(slot, "cancelled")
            elif slot.follow is not None:
                self._catch_up(slot)
        # Generating sequences and prompts are decoded apart: llama.cpp splits a batch that spans several KV
        # streams into micro-batches with as many tokens of each sequence, so one generating sequence's single
        # token next to seven prompts would cut their reading into one-token steps (2-3x slower prefill here).
        generating = [(slot, [slot.next_token]) for slot in self.slots.values() if slot.next_token is not None]
        self._decode(generating)
        room = self.m.n_batch
        reading = []
        for slot in self.slots.values():
            if slot.pending and room > 0:
                take = slot.pending[:room]
                del slot.pending[: len(take)]
                reading.append((slot, take))
                room -= len(take)
        self._decode(reading)

    def _decode(self, work: list[tuple[_Slot, list[int]]]) -> None:
        """Decode each slot's tokens in one batch, then sample the slots whose last token needs a successor."""
        if not work:
            return
        n, rows = 0, []
        for slot, tokens in work:
            for i, token in enumerate(tokens):
                wants = i == len(tokens) - 1 and not slot.pending  # a generated token, or a prompt's last
                self.m.put(n, token, slot.pos, slot.seq, wants)
                if wants:
                    rows.append((n, slot))
                slot.pos += 1
                n += 1
        self.most_sequences = max(self.most_sequences, len(work))
        self.m.decode(n)
        for index, slot in rows:
            self._sample(index, slot)

    def _sample(self, index: int, slot: _Slot) -> None:
        s = slot.req.settings
        banned = slot.ngrams.banned() | (self.m.eog_tokens if s.ignore_eos else frozenset())
        if banned:
            self.m.ban(index, banned)
        token = self.m.sample(slot.sampler, index)
        if self.m.is_eog(token):
            return self._finish(slot, "stop")
        slot.ngrams.push(token)
        slot.generated += 1
        piece = slot.decoder.decode(self.m.piece(token))
        before = len(slot.text)
        slot.text += piece
        for stop in s.stop:
            at = slot.text.find(stop, max(0, before - len(stop)))
            if stop and at != -1:
                if at > before:
                    slot.req.emit(slot.text[before:at])
                slot.text = slot.text[:at]
                return self._finish(slot, "stop")
        if piece:
            slot.req.emit(piece)
        if slot.generated >= s.max_new_tokens or slot.pos >= self.n_ctx_per_seq - 1:
            return self._finish(slot, "length")
        slot.next_token = token

    def _finish(self, slot: _Slot, reason: str) -> None:
        self._release(slot)  # first, so a caller woken by the result already sees the slot free
        slot.req.emit(Completion(slot.text, slot.generated, len(slot.req.tokens), reason))

    def _release(self, slot: _Slot) -> None:
        """Free the slot; its sequence keeps the cells it decoded for the next prompt that starts alike."""
        self.m.free_sampler(slot.sampler)
        self.kept[slot.seq] = (slot.prompt + slot.ngrams.tokens)[: slot.pos]
        self.slots.pop(slot.seq, None)

    def drop_running(self, error: BaseException) -> None:
        for slot in list(self.slots.values()):
            self._release(slot)
            slot.req.emit(error)
        for seq in range(self.parallel):  # after a failed decode no cell is trusted
            self.m.clear(seq)
        self.kept.clear()

    def free(self) -> None:
        self.m.free()


class LlamaCppBackend(WorkerBackend):
    name = "llamacpp"

    def __init__(self, model_path: str | Path, *, context_window: int = 2048, threads: int | None = None, parallel: int = 1):
        self.model_path = check_gguf(Path(model_path).expanduser())
        self.model_id = self.model_path.name
        self.context_window = context_window
        self.threads = threads or os.cpu_count() or 1
        self.parallel = parallel
        self.template: ChatTemplate | None = None
        self._model: LlamaModel | None = None

    @classmethod
    def from_settings(cls, settings) -> LlamaCppBackend:
        return cls(settings.model or embedded_model_path(), context_window=settings.context_window, threads=settings.threads,
                   parallel=settings.parallel or cls.default_parallel)

    def open_model(self) -> LlamaWorker:
        model = LlamaModel(self.model_path, n_seq=self.parallel, n_ctx_per_seq=self.context_window, threads=self.threads)
        self._model = model
        self.eos_token = model.eos_text
        if model.chat_template:
            self.template = ChatTemplate(model.chat_template, bos_token=model.bos_text or "", eos_token=model.eos_text or "")
        else:
            self.default_prompt_format = "dialogpt"
        return LlamaWorker(model, parallel=self.parallel, n_ctx_per_seq=self.context_window)

    def count_tokens(self, text: str) -> int:
        if self._model is None:
            return super().count_tokens(text)
        return len(self._model.tokenize(text))

    def prompt_tokens(self, prompt: Prompt) -> list[int]:
        # A chat template writes any BOS itself; raw text gets the one the model asks for.
        add_bos = self._model.add_bos and (not prompt.is_chat or self.template is None)
        return self._model.tokenize(prompt_text(prompt, self.template), add_special=add_bos)

    async def aclose(self) -> None:
        await super().aclose()
        self._model = None
