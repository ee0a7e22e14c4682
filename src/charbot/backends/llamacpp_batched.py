"""llama.cpp with continuous batching: several conversations decoded together in one llama.cpp context.

One worker thread owns the context. Each step it builds one batch from (a) the next token of every sequence
that is generating and (b) prompt tokens of newly admitted sequences, up to `n_batch` — so a long prompt never
stalls the others for more than a step. Prompts that share a prefix with the previous one (the persona's
system prompt, in practice) copy its KV cells instead of recomputing them. Each sequence has its own KV stream,
so a sequence attends over its own cells only.
"""

from __future__ import annotations

import asyncio
import codecs
import ctypes
import os
import random
import threading
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from charbot.backends._threads import WorkerRequest, worker_results
from charbot.backends.base import Backend, Capabilities, Completion, Prompt
from charbot.errors import BackendError, ModelError
from charbot.generation import GenerationSettings, NoRepeatNGram
from charbot.models import check_gguf

_END = object()
MIN_SHARED = 16  # tokens a prompt must share with one being read before it waits to copy them


@dataclass
class _Slot:
    seq: int
    req: WorkerRequest
    sampler: object
    prompt: list[int]
    pending: list[int]  # prompt tokens not yet decoded
    pos: int  # positions of this sequence already in the KV cache
    ngrams: NoRepeatNGram
    # (leader, n): this prompt's first n tokens are the leader's too; wait for the leader to decode them, then copy
    follow: tuple["_Slot", int] | None = None
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("ignore"))
    text: str = ""
    generated: int = 0
    next_token: int | None = None


class _BatchedContext:
    """The llama.cpp model + context and the worker thread that schedules sequences."""

    def __init__(self, path: Path, *, n_parallel: int, n_ctx_per_seq: int, threads: int, n_batch: int = 512):
        import llama_cpp as L
        from llama_cpp._logger import set_verbose

        set_verbose(False)  # llama.cpp's load chatter goes to the log only at ERROR
        self.L = L
        L.llama_backend_init()
        self.model = L.llama_model_load_from_file(str(path).encode(), L.llama_model_default_params())
        if not self.model:
            raise ModelError(f"llama.cpp could not load {path}", "the file may be truncated or corrupt: re-download or re-export it")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.n_parallel = n_parallel
        self.prefix_seq = n_parallel  # an extra sequence holding the last prompt, for prefix reuse
        self.n_ctx_per_seq = n_ctx_per_seq
        self.n_batch = n_batch
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx_per_seq * (n_parallel + 1)
        cp.n_batch = n_batch
        cp.n_ubatch = n_batch
        cp.n_seq_max = n_parallel + 1
        cp.n_threads = threads
        cp.n_threads_batch = threads
        # One KV stream per sequence: in a unified cache every token attends over every sequence's cells
        # (masked), which made a lone request 3x slower once the cache had been used by a burst.
        cp.kv_unified = False
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as the high-level Llama does: same numerics
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise ModelError(f"llama.cpp could not create a context for {path}", "lower context_window or parallel")
        self.mem = L.llama_get_memory(self.ctx)
        self.batch = L.llama_batch_init(n_batch, 0, 1)
        self.prefix_tokens: list[int] = []
        self._new_prefix: tuple[int, list[int]] | None = None
        self.pending: deque[WorkerRequest] = deque()
        self.slots: dict[int, _Slot] = {}
        self.cond = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="llamacpp-batch", daemon=True)
        self.thread.start()

    # --- tokens ---------------------------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        data = text.encode("utf-8")
        size = len(data) + 16
        buf = (self.L.llama_token * size)()
        n = self.L.llama_tokenize(self.vocab, data, len(data), buf, size, add_special, True)
        if n < 0:
            buf = (self.L.llama_token * -n)()
            n = self.L.llama_tokenize(self.vocab, data, len(data), buf, -n, add_special, True)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self.L.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
        return buf.raw[:n] if n > 0 else b""

    # --- requests -------------------------------------------------------------------------------------
    def submit(self, req: WorkerRequest) -> None:
        with self.cond:
            if self.closed:
                raise BackendError("the llama.cpp backend is closed")
            self.pending.append(req)
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()
        self.thread.join(timeout=30)
        L = self.L
        L.llama_batch_free(self.batch)
        L.llama_free(self.ctx)
        L.llama_model_free(self.model)

    # --- the worker -----------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.closed and not self.pending and not self.slots:
                    self.cond.wait()
                if self.closed:
                    for slot in list(self.slots.values()):
                        self._finish(slot, "cancelled")
                    while self.pending:
                        self.pending.popleft().emit(BackendError("the llama.cpp backend was closed"))
                    return
                while self.pending and len(self.slots) < self.n_parallel:
                    self._admit(self.pending.popleft())
            try:
                self._step()
            except Exception as exc:  # a failed decode fails the sequences in it, not the worker
                for slot in list(self.slots.values()):
                    self._release(slot)
                    slot.req.emit(BackendError(f"llama.cpp decode failed: {exc}"))

    def _admit(self, req: WorkerRequest) -> None:
        L = self.L
        if req.cancelled.is_set():
            return
        seq = next(s for s in range(self.n_parallel) if s not in self.slots)
        L.llama_memory_seq_rm(self.mem, seq, -1, -1)
        tokens = req.tokens[-(self.n_ctx_per_seq - req.settings.max_new_tokens - 1) :]
        s = req.settings
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if s.repetition_penalty != 1.0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_penalties(64, s.repetition_penalty, 0.0, 0.0))
        if s.do_sample and s.temperature > 0:
            if s.top_k > 0:
                L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(s.top_k))
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(s.top_p, 1))
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(s.temperature))
            seed = s.seed if s.seed is not None else random.getrandbits(31)
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed))
        else:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
        slot = _Slot(seq, req, chain, tokens, [], 0, NoRepeatNGram(s.no_repeat_ngram_size))
        # A burst of requests for one persona shares its system prompt: decode it once (in the first one's
        # sequence) and copy the cells, rather than once per request.
        leader, shared = self._leader_for(tokens)
        if leader is not None and shared >= self._cached(tokens) + MIN_SHARED:
            slot.follow = (leader, shared)
        else:
            self._start_from_cache(slot)
        self.slots[seq] = slot
        # remember this prompt as the prefix for the next one (it shares the persona's system prompt)
        self._new_prefix = (seq, tokens)

    @staticmethod
    def _common(a: list[int], b: list[int]) -> int:
        n = 0
        for x, y in zip(a, b):
            if x != y:
                break
            n += 1
        return min(n, len(a) - 1)  # the last prompt token must be decoded for its logits

    def _cached(self, tokens: list[int]) -> int:
        return self._common(tokens, self.prefix_tokens)

    def _leader_for(self, tokens: list[int]) -> tuple[_Slot | None, int]:
        """The sequence still reading a prompt that shares the longest prefix with `tokens`."""
        best, shared = None, 0
        for slot in self.slots.values():
            if slot.follow is None and slot.pending:
                n = self._common(tokens, slot.prompt)
                if n > shared:
                    best, shared = slot, n
        return best, shared

    def _start_from_cache(self, slot: _Slot) -> None:
        common = self._cached(slot.prompt)
        if common > 0:
            self._copy(self.prefix_seq, slot.seq, common)
        slot.pos = common
        slot.pending = slot.prompt[common:]

    def _copy(self, src: int, dst: int, n: int) -> None:
        """`dst` gets the first `n` positions of `src`. Streams are copied whole (llama.cpp copies between
        streams only that way), then the tail is dropped."""
        L = self.L
        L.llama_memory_seq_rm(self.mem, dst, -1, -1)
        L.llama_memory_seq_cp(self.mem, src, dst, -1, -1)
        L.llama_memory_seq_rm(self.mem, dst, n, -1)

    def _catch_up(self, slot: _Slot) -> None:
        leader, shared = slot.follow
        if self.slots.get(leader.seq) is not leader:  # the leader went away (cancelled): read the prompt alone
            slot.follow = None
            self._start_from_cache(slot)
        elif leader.pos >= shared:
            self._copy(leader.seq, slot.seq, shared)
            slot.follow = None
            slot.pos = shared
            slot.pending = slot.prompt[shared:]

    def _step(self) -> None:
        L, batch = self.L, self.batch
        n = 0
        wants_logits: list[tuple[int, _Slot]] = []
        for slot in list(self.slots.values()):
            if slot.req.cancelled.is_set():
                self._finish(slot, "cancelled")
        for slot in list(self.slots.values()):
            if slot.follow is not None:
                self._catch_up(slot)
        # generating sequences first: one token each
        for slot in self.slots.values():
            if slot.next_token is not None and n < self.n_batch:
                self._put(n, slot.next_token, slot.pos, slot.seq, True)
                wants_logits.append((n, slot))
                slot.pos += 1
                n += 1
        # then prompt tokens of sequences still reading their prompt
        for slot in self.slots.values():
            take = min(len(slot.pending), self.n_batch - n)
            for i, token in enumerate(slot.pending[:take]):
                last = i == len(slot.pending) - 1
                self._put(n, token, slot.pos, slot.seq, last)
                if last:
                    wants_logits.append((n, slot))
                slot.pos += 1
                n += 1
            del slot.pending[:take]
        if n == 0:
            return
        batch.n_tokens = n
        rc = L.llama_decode(self.ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        new_prefix = self._new_prefix
        if new_prefix is not None and new_prefix[0] in self.slots and self._prompt_read(self.slots[new_prefix[0]]):
            seq, tokens = new_prefix
            self._copy(seq, self.prefix_seq, len(tokens))
            self.prefix_tokens = tokens
            self._new_prefix = None
        for index, slot in wants_logits:
            self._sample(index, slot)

    @staticmethod
    def _prompt_read(slot: _Slot) -> bool:
        return slot.follow is None and not slot.pending

    def _put(self, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        b = self.batch
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = logits

    def _sample(self, index: int, slot: _Slot) -> None:
        L = self.L
        banned = slot.ngrams.banned()
        if banned:
            logits = np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, index), shape=(self.n_vocab,))
            logits[list(banned)] = -np.inf
        token = L.llama_sampler_sample(slot.sampler, self.ctx, index)
        L.llama_sampler_accept(slot.sampler, token)
        if L.llama_vocab_is_eog(self.vocab, token):
            return self._finish(slot, "stop")
        slot.ngrams.push(token)
        slot.generated += 1
        piece = slot.decoder.decode(self.piece(token))
        before = len(slot.text)
        slot.text += piece
        s = slot.req.settings
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
        self.L.llama_sampler_free(slot.sampler)
        self.L.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)
        self.slots.pop(slot.seq, None)


class LlamaCppBatchedBackend(Backend):
    name = "llamacpp"
    capabilities = Capabilities(chat=True, raw_text=True, streaming=True, batching=True, exact_tokens=True)

    def __init__(self, model_path: str | Path, *, context_window: int = 2048, threads: int | None = None, parallel: int = 4, seed: int | None = None):
        self.model_path = check_gguf(Path(model_path).expanduser())
        self.model_id = self.model_path.name
        self.context_window = context_window
        self.threads = threads or os.cpu_count() or 1
        self.parallel = parallel
        self._ctx: _BatchedContext | None = None
        self._formatter = None

    async def load(self) -> None:
        if self._ctx is None:
            self._ctx = await asyncio.to_thread(self._load)
        self.ready = True

    def _load(self) -> _BatchedContext:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        ctx = _BatchedContext(self.model_path, n_parallel=self.parallel, n_ctx_per_seq=self.context_window, threads=self.threads)
        L = ctx.L
        self.eos_token = self._special_text(ctx, L.llama_vocab_eos(ctx.vocab))
        template = L.llama_model_chat_template(ctx.model, None)
        if template:
            bos = self._special_text(ctx, L.llama_vocab_bos(ctx.vocab))
            self._formatter = Jinja2ChatFormatter(template.decode("utf-8"), eos_token=self.eos_token or "", bos_token=bos or "")
        else:
            self.default_prompt_format = "dialogpt"
        self._add_bos = bool(L.llama_vocab_get_add_bos(ctx.vocab))
        return ctx

    @staticmethod
    def _special_text(ctx: _BatchedContext, token: int) -> str | None:
        if token < 0:
            return None
        buf = ctypes.create_string_buffer(64)
        n = ctx.L.llama_token_to_piece(ctx.vocab, token, buf, 64, 0, True)
        return buf.raw[:n].decode("utf-8", "ignore") if n > 0 else None

    def count_tokens(self, text: str) -> int:
        if self._ctx is None:
            return super().count_tokens(text)
        return len(self._ctx.tokenize(text))

    def _prompt_tokens(self, prompt: Prompt) -> list[int]:
        if prompt.is_chat:
            if self._formatter is None:
                text = "\n".join(m.content for m in prompt.messages) + "\n"
            else:
                messages = [{"role": m.role, "content": m.content} for m in prompt.messages]
                text = self._formatter(messages=messages).prompt + prompt.reply_prefix
        else:
            text = prompt.text or ""
        return self._ctx.tokenize(text, add_special=self._add_bos)

    async def stream(self, prompt: Prompt, settings: GenerationSettings) -> AsyncIterator[str]:
        async for item in self._generate(prompt, settings):
            if isinstance(item, str):
                yield item

    async def complete(self, prompt: Prompt, settings: GenerationSettings) -> Completion:
        result = None
        async for item in self._generate(prompt, settings):
            if isinstance(item, Completion):
                result = item
        assert result is not None
        return result

    async def _generate(self, prompt: Prompt, settings: GenerationSettings):
        if self._ctx is None:
            raise BackendError("the llama.cpp model is not loaded yet", "call load() first")
        loop = asyncio.get_running_loop()
        req = WorkerRequest(self._prompt_tokens(prompt), settings, loop, asyncio.Queue())
        self._ctx.submit(req)
        async for item in worker_results(req.queue, req.cancelled):
            yield item

    @property
    def active(self) -> int:
        return len(self._ctx.slots) + len(self._ctx.pending) if self._ctx else 0

    async def aclose(self) -> None:
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            await asyncio.to_thread(ctx.close)
        self.ready = False
