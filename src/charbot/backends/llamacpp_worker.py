"""The llama.cpp worker thread: admits requests into sequences, decodes them together, samples, streams.

Which sequence a prompt goes to, and how much of it is already there: the free sequence whose kept cells share
the longest start with it; else a saved state from the prompt cache (kv_cache.py) when that shares more; else,
for a burst of prompts that share a start none of those holds, the first one reads it and the others copy it.
Cells about to be overwritten are saved to the cache first when they hold enough of another conversation.
"""

from __future__ import annotations

import codecs
import logging
import random
from dataclasses import dataclass, field

from charbot.backends.base import Completion, of_conversation
from charbot.backends.kv_cache import PromptCache, common_prefix
from charbot.backends.llamacpp_model import LlamaModel
from charbot.backends.worker import ModelWorker, Request
from charbot.errors import BackendError
from charbot.generation import NoRepeatNGram

log = logging.getLogger(__name__)

MIN_SHARED = 16  # tokens a prompt must share with one being read before it waits to copy them
# Cells about to be overwritten are saved when at least this many of them would be lost: reading 16 tokens again
# costs more (~35 ms here) than restoring a whole saved conversation (~1 ms).
MIN_UNIQUE = 16


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


def _common(a, b) -> int:
    """Tokens `a` (a prompt) shares with `b` from the start; never all of `a`: its last token must be decoded
    for its logits."""
    return min(common_prefix(a, b), len(a) - 1)


class LlamaWorker(ModelWorker):
    def __init__(self, model: LlamaModel, *, parallel: int, n_ctx_per_seq: int, cache: PromptCache | None = None):
        super().__init__("llama.cpp")
        self.m = model
        self.parallel = parallel
        self.n_ctx_per_seq = n_ctx_per_seq
        self.cache = cache
        self.kept: dict[int, tuple[tuple[int, ...], str | None]] = {}  # what each free sequence's cells still hold
        self.slots: dict[int, _Slot] = {}
        self.most_sequences = 0  # the most sequences one decode step has carried (batching observed)
        self.reused_tokens = 0  # prompt tokens not read again: kept in a sequence, or restored from the cache

    def running(self) -> int:
        return len(self.slots)

    def admit(self) -> None:
        while self.waiting and len(self.slots) < self.parallel:
            req = self.waiting.popleft()
            if req.cancelled.is_set():
                continue
            try:
                self._admit(req)
            except Exception as exc:  # that request fails, with the cells of the free sequences dropped as unknown
                log.exception("admitting a request failed")
                for seq in range(self.parallel):
                    if seq not in self.slots:
                        self.m.clear(seq)
                        self.kept.pop(seq, None)
                req.emit(BackendError(f"llama.cpp generation failed: {exc}"))

    def _admit(self, req: Request) -> None:
        s = req.settings
        tokens = req.tokens[-(self.n_ctx_per_seq - s.max_new_tokens - 1) :]
        seq, kept = self._best_free(tokens)
        entry, cached = self.cache.best(tuple(tokens)) if self.cache is not None else (None, 0)
        seed = s.seed if s.seed is not None else random.getrandbits(31)
        slot = _Slot(seq, req, self.m.sampler(s, seed), tokens)
        # A burst of requests for one persona shares its system prompt: when nothing kept or cached holds it yet,
        # decode it once (in the first one's sequence) and copy the cells, rather than once per request.
        leader, shared = self._leader_for(tokens)
        if leader is not None and shared >= max(kept, cached) + MIN_SHARED:
            self._vacate(seq, 0)
            self.m.clear(seq)
            slot.follow = (leader, shared)
        elif entry is not None and cached >= kept + MIN_SHARED:
            state = self.cache.state(entry)  # taken first: saving the cells vacated may replace or evict the entry
            self._vacate(seq, 0)
            restored = self.m.restore(seq, state)
            self._count(cached if restored else 0, hit=restored)
            self._resume(slot, cached if restored else 0)
        else:
            self._vacate(seq, kept)
            self._count(kept, hit=False)
            self._resume(slot, kept)
        self.kept.pop(seq, None)
        self.slots[seq] = slot

    def _best_free(self, tokens: list[int]) -> tuple[int, int]:
        """The free sequence whose kept cells share the longest start with `tokens`, and that length."""
        shared = {s: _common(tokens, self.kept[s][0]) if s in self.kept else 0 for s in range(self.parallel) if s not in self.slots}
        seq = max(shared, key=lambda s: (shared[s], -s))
        return seq, shared[seq]

    def _vacate(self, seq: int, keep: int) -> None:
        """Before the cells of `seq` past `keep` are overwritten: save them to the cache when they hold enough of
        another conversation to be worth reading back later."""
        if self.cache is None or seq not in self.kept:
            return
        tokens, key = self.kept[seq]
        if len(tokens) - keep >= MIN_UNIQUE and not self.cache.holds(tokens):
            self.cache.put(tokens, self.m.save(seq), key)

    def _count(self, reused: int, hit: bool) -> None:
        self.reused_tokens += reused
        if self.cache is not None:
            stats = self.cache.stats
            stats.hits += hit
            stats.misses += not hit
            stats.saved_tokens += reused if hit else 0

    def forget(self, conversation: str) -> None:
        """Drop everything read for `conversation`: its cached states, and the cells a sequence kept."""
        if self.cache is not None:
            self.cache.forget(conversation)
        for seq, (_tokens, owner) in list(self.kept.items()):
            if of_conversation(owner, conversation):
                self.m.clear(seq)
                del self.kept[seq]

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
        self.kept[slot.seq] = (tuple((slot.prompt + slot.ngrams.tokens)[: slot.pos]), slot.req.key)
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
