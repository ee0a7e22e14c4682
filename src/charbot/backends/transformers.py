"""Hugging Face transformers: a local HF-format directory or a hub id, on CPU or CUDA.

Also the path for models produced by `charbot train` and for DialoGPT-style models (no chat template:
turns joined by EOS, as the original tutorial did).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from charbot.backends.base import Backend, Capabilities, Completion, Prompt
from charbot.backends._threads import WorkerRequest
from charbot.backends.batching import Batcher
from charbot.errors import ModelError
from charbot.generation import GenerationSettings


class TransformersBackend(Backend):
    name = "transformers"
    capabilities = Capabilities(chat=True, raw_text=True, streaming=True, batching=True, exact_tokens=True)

    def __init__(
        self, model: str, *, device: str = "auto", context_window: int | None = None, threads: int | None = None, parallel: int = 4
    ):
        self.model_ref = model
        self.model_id = model
        self.device_name = device
        self._context_override = context_window
        self.threads = threads
        self.parallel = parallel  # requests generated together in one batch (dynamic batching)
        self.model = None
        self.tokenizer = None
        self._lock = threading.Lock()
        self._batcher: Batcher | None = None

    async def load(self) -> None:
        if self.model is None:
            await asyncio.to_thread(self._load)
        if self._batcher is None:
            self._batcher = Batcher(self, self.parallel)
        self.ready = True

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.threads:
            torch.set_num_threads(self.threads)
        device = self.device_name
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        ref = self.model_ref
        kwargs: dict = {}
        path = Path(ref).expanduser()
        if path.suffix == ".gguf":
            ref, kwargs = _converted(path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(ref, **kwargs)
            dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
            self.model = AutoModelForCausalLM.from_pretrained(ref, dtype=dtype, **kwargs).to(device).eval()
        except OSError as exc:
            raise ModelError(
                f"transformers could not load '{self.model_ref}': {str(exc).splitlines()[0]}",
                "pass a local model directory, or a hub id while the hub is reachable (HF_HUB_OFFLINE unset)",
            ) from None
        self.device = device
        tok = self.tokenizer
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        self.eos_token = tok.eos_token
        self.default_prompt_format = "chat" if tok.chat_template else "dialogpt"
        limit = getattr(self.model.config, "max_position_embeddings", None) or getattr(self.model.config, "n_positions", 1024)
        self.context_window = min(self._context_override or limit, limit)

    def count_tokens(self, text: str) -> int:
        if self.tokenizer is None:
            return super().count_tokens(text)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prompt_ids(self, prompt: Prompt) -> list[int]:
        tok = self.tokenizer
        if prompt.is_chat and tok.chat_template:
            messages = [{"role": m.role, "content": m.content} for m in prompt.messages]
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prompt.reply_prefix
        elif prompt.is_chat:  # chat messages for a model without a template: plain "Name: text" lines
            text = "\n".join(m.content for m in prompt.messages) + "\n"
        else:
            text = prompt.text
        return tok(text, add_special_tokens=False)["input_ids"]

    def _generate_kwargs(self, settings: GenerationSettings) -> dict:
        """What one batch shares; stop strings and length caps are per request (see batching.RowStops)."""
        kw = dict(
            max_new_tokens=settings.max_new_tokens,
            do_sample=settings.do_sample,
            no_repeat_ngram_size=settings.no_repeat_ngram_size or None,
            repetition_penalty=settings.repetition_penalty,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        if settings.do_sample:
            kw.update(temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p)
        return kw

    def _job(self, prompt: Prompt, settings: GenerationSettings) -> WorkerRequest:
        if self._batcher is None:
            raise ModelError("the transformers model is not loaded yet", "call load() first")
        return WorkerRequest(self._prompt_ids(prompt), settings, asyncio.get_running_loop(), asyncio.Queue())

    async def complete(self, prompt: Prompt, settings: GenerationSettings) -> Completion:
        result = None
        async for item in self._batcher.run(self._job(prompt, settings)):
            if isinstance(item, Completion):
                result = item
        assert result is not None
        return result

    async def stream(self, prompt: Prompt, settings: GenerationSettings) -> AsyncIterator[str]:
        async for item in self._batcher.run(self._job(prompt, settings)):
            if isinstance(item, str):
                yield item

    @property
    def active(self) -> int:
        return self._batcher.active if self._batcher else 0

    async def aclose(self) -> None:
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            await asyncio.to_thread(batcher.close)
        self.model = None
        self.ready = False


def _converted(path: Path) -> tuple[str, dict]:
    """A GGUF file: the dequantised copy `charbot train` keeps in the cache (converted once, ~3 s to load after),
    else let transformers dequantise it on every start (needs the `gguf` package)."""
    try:
        from charbot.train.base_model import convert_gguf
    except ImportError:
        return str(path.parent), {"gguf_file": path.name}
    return str(convert_gguf(path)), {}
