"""A GGUF model and one llama.cpp context with a KV stream per sequence, through llama-cpp-python's C API.

The worker thread (llamacpp.py) does all decoding; `tokenize` and `piece` only read the vocabulary and may be
called from any thread.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
from pathlib import Path

import numpy as np

from charbot.errors import ModelError
from charbot.generation import GenerationSettings


class LlamaModel:
    def __init__(self, path: Path, *, n_seq: int, n_ctx_per_seq: int, threads: int, n_batch: int = 512):
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
        self.n_batch = n_batch
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx_per_seq * n_seq
        cp.n_batch = cp.n_ubatch = n_batch
        cp.n_seq_max = n_seq
        cp.n_threads = cp.n_threads_batch = threads
        # One KV stream per sequence: in a unified cache every token attends over every sequence's cells
        # (masked), which made a lone request 3x slower once the cache had been used by a burst.
        cp.kv_unified = False
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as llama-cpp-python's Llama does: same numerics
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            L.llama_model_free(self.model)
            raise ModelError(f"llama.cpp could not create a context for {path}", "lower context_window or parallel")
        self.mem = L.llama_get_memory(self.ctx)
        self.batch = L.llama_batch_init(n_batch, 0, 1)
        self.add_bos = bool(L.llama_vocab_get_add_bos(self.vocab))
        self.eos_text = self.special_text(L.llama_vocab_eos(self.vocab))
        self.bos_text = self.special_text(L.llama_vocab_bos(self.vocab))
        template = L.llama_model_chat_template(self.model, None)
        self.chat_template = template.decode("utf-8") if template else None

    @property
    def kv_bytes_per_token(self) -> int:
        """What one token's KV cells cost (K and V, every layer, f16): the size of a saved state per token."""
        L, m = self.L, self.model
        head = L.llama_model_n_embd(m) // max(1, L.llama_model_n_head(m))
        return 2 * L.llama_model_n_layer(m) * L.llama_model_n_head_kv(m) * head * 2

    # --- vocabulary ----------------------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        data = text.encode("utf-8")
        size = len(data) + 16
        buf = (self.L.llama_token * size)()
        n = self.L.llama_tokenize(self.vocab, data, len(data), buf, size, add_special, True)
        if n < 0:
            buf = (self.L.llama_token * -n)()
            n = self.L.llama_tokenize(self.vocab, data, len(data), buf, -n, add_special, True)
        return list(buf[:n])

    def piece(self, token: int, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self.L.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
        return buf.raw[:n] if n > 0 else b""

    def special_text(self, token: int) -> str | None:
        return (self.piece(token, special=True).decode("utf-8", "ignore") or None) if token >= 0 else None

    def is_eog(self, token: int) -> bool:
        return bool(self.L.llama_vocab_is_eog(self.vocab, token))

    @functools.cached_property
    def eog_tokens(self) -> frozenset[int]:
        """Every end-of-generation token (EOS, EOT, …): banned when a request ignores EOS."""
        return frozenset(t for t in range(self.n_vocab) if self.is_eog(t))

    # --- KV streams and decoding (worker thread only) ------------------------------------------------
    def clear(self, seq: int, start: int = -1) -> None:
        self.L.llama_memory_seq_rm(self.mem, seq, start, -1)

    def copy(self, src: int, dst: int, n: int) -> None:
        """`dst` gets the first `n` positions of `src`. Streams are copied whole (llama.cpp copies between
        streams only that way), then the tail is dropped."""
        self.clear(dst)
        self.L.llama_memory_seq_cp(self.mem, src, dst, -1, -1)
        self.clear(dst, n)

    def save(self, seq: int) -> mmap.mmap:
        """The sequence's KV cells (only the cells it uses), written straight into memory of their own.

        States are megabytes each and come and go; in an anonymous mapping of its own, a dropped state's memory
        goes back to the system at once (from the malloc heap it often would not, and the process would stay
        at its largest size whatever the cache's budget)."""
        size = self.L.llama_state_seq_get_size(self.ctx, seq)
        data = mmap.mmap(-1, size)
        view = (ctypes.c_uint8 * size).from_buffer(data)
        n = self.L.llama_state_seq_get_data(self.ctx, view, size, seq)
        del view  # no export may remain while the mapping is resized
        if 0 < n < size:
            data.resize(n)
        return data

    def restore(self, seq: int, data: mmap.mmap | bytearray) -> bool:
        """Put saved cells into the (cleared) sequence; False when llama.cpp refuses them."""
        self.clear(seq)
        buf = (ctypes.c_uint8 * len(data)).from_buffer(data)
        return self.L.llama_state_seq_set_data(self.ctx, buf, len(data), seq) > 0

    def put(self, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        b = self.batch
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = logits

    def decode(self, n: int) -> None:
        self.batch.n_tokens = n
        rc = self.L.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def ban(self, index: int, tokens) -> None:
        """Make `tokens` impossible at batch row `index` (before sampling it)."""
        logits = np.ctypeslib.as_array(self.L.llama_get_logits_ith(self.ctx, index), shape=(self.n_vocab,))
        logits[list(tokens)] = -np.inf

    def sampler(self, s: GenerationSettings, seed: int):
        L = self.L
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if s.repetition_penalty != 1.0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_penalties(64, s.repetition_penalty, 0.0, 0.0))
        if s.do_sample and s.temperature > 0:
            if s.top_k > 0:
                L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(s.top_k))
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(s.top_p, 1))
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(s.temperature))
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed))
        else:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
        return chain

    def sample(self, chain, index: int) -> int:
        token = self.L.llama_sampler_sample(chain, self.ctx, index)
        self.L.llama_sampler_accept(chain, token)
        return token

    def free_sampler(self, chain) -> None:
        self.L.llama_sampler_free(chain)

    def free(self) -> None:
        L = self.L
        L.llama_batch_free(self.batch)
        L.llama_free(self.ctx)
        L.llama_model_free(self.model)
