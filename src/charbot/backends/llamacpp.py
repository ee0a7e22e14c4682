"""llama.cpp: GGUF models on CPU, the default backend, with continuous batching.

One worker thread (llamacpp_worker.py) owns the model (llamacpp_model.py). Each step it decodes the next token
of every sequence that is generating, then up to `n_batch` prompt tokens of newly admitted ones, so a long
prompt never stalls the others for more than a step. `parallel` sequences run at once (1 by default: one
conversation at a time, as the tutorial served). A prompt reads only what no sequence holds yet: finished
sequences keep their KV cells, and a prompt cache (kv_cache.py) keeps the states of earlier prompts under a
byte budget, so a conversation's next turn pays for its new tokens even when other conversations came between.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from charbot.backends.base import Prompt
from charbot.backends.kv_cache import PromptCache
from charbot.backends.llamacpp_model import LlamaModel
from charbot.backends.llamacpp_worker import LlamaWorker
from charbot.backends.worker import WorkerBackend
from charbot.chat_template import ChatTemplate
from charbot.models import check_gguf, embedded_model_path
from charbot.rendering import prompt_text

GIB = 1 << 30


CACHED_CONVERSATIONS = 20  # full-length conversations the default budget holds, when memory allows


def default_cache_bytes(bytes_per_token: int, context_window: int) -> int:
    """Room for saved prompt states when the settings give none: 20 full-length conversations of this model
    (about 1 GB for the default model at 2,048 tokens), but never more than a tenth of the machine's memory."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = 4 * GIB
    return min(CACHED_CONVERSATIONS * context_window * bytes_per_token, memory // 10)


class LlamaCppBackend(WorkerBackend):
    name = "llamacpp"

    def __init__(self, model_path: str | Path, *, context_window: int = 2048, threads: int | None = None, parallel: int = 1,
                 cache_bytes: int | None = None, cache_dir: Path | None = None, cache_disk_bytes: int = 4 * GIB):
        """`cache_bytes`: memory for saved prompt states (None: `default_cache_bytes`, 0: no prompt cache);
        `cache_dir`: where states evicted from memory go, up to `cache_disk_bytes` (None: nowhere)."""
        self.model_path = check_gguf(Path(model_path).expanduser())
        self.model_id = self.model_path.name
        self.context_window = context_window
        self.threads = threads or os.cpu_count() or 1
        self.parallel = parallel
        self.cache_bytes = cache_bytes  # None: decided from the model's size once it is loaded
        self.cache_dir = cache_dir
        self.cache_disk_bytes = cache_disk_bytes
        self.template: ChatTemplate | None = None
        self._model: LlamaModel | None = None

    @classmethod
    def from_settings(cls, settings) -> LlamaCppBackend:
        c = settings.prompt_cache
        return cls(settings.model or embedded_model_path(), context_window=settings.context_window, threads=settings.threads,
                   parallel=settings.parallel or cls.default_parallel, cache_bytes=c.memory_bytes, cache_dir=c.spill_dir,
                   cache_disk_bytes=c.spill_bytes)

    def fingerprint(self) -> str:
        """What a saved state depends on: the model file and the context it was read with."""
        st = self.model_path.stat()
        import llama_cpp

        ident = f"{self.model_path.resolve()}:{st.st_size}:{st.st_mtime_ns}:{self.context_window}:{llama_cpp.__version__}"
        return hashlib.sha256(ident.encode()).hexdigest()[:16]

    def open_model(self) -> LlamaWorker:
        model = LlamaModel(self.model_path, n_seq=self.parallel, n_ctx_per_seq=self.context_window, threads=self.threads)
        self._model = model
        self.eos_token = model.eos_text
        if model.chat_template:
            self.template = ChatTemplate(model.chat_template, bos_token=model.bos_text or "", eos_token=model.eos_text or "")
        else:
            self.default_prompt_format = "dialogpt"
        cache = None
        if self.cache_bytes is None:
            self.cache_bytes = default_cache_bytes(model.kv_bytes_per_token, self.context_window)
        if self.cache_bytes > 0:
            cache = PromptCache(self.cache_bytes, self.cache_dir, self.cache_disk_bytes if self.cache_dir else 0, self.fingerprint())
        return LlamaWorker(model, parallel=self.parallel, n_ctx_per_seq=self.context_window, cache=cache)

    def count_tokens(self, text: str) -> int:
        if self._model is None:
            return super().count_tokens(text)
        return len(self._model.tokenize(text))

    def prompt_tokens(self, prompt: Prompt) -> list[int]:
        # A chat template writes any BOS itself; raw text gets the one the model asks for.
        add_bos = self._model.add_bos and (not prompt.is_chat or self.template is None)
        return self._model.tokenize(prompt_text(prompt, self.template), add_special=add_bos)

    def forget(self, cache_key: str) -> None:
        worker = self.worker
        if isinstance(worker, LlamaWorker):
            worker.later(lambda: worker.forget(cache_key))

    def cache_stats(self) -> dict[str, int]:
        worker = self.worker
        if not isinstance(worker, LlamaWorker):
            return {}
        stats = worker.cache.stats.as_dict() if worker.cache is not None else {}
        return {**stats, "reused_tokens": worker.reused_tokens}

    async def aclose(self) -> None:
        await super().aclose()
        self._model = None
