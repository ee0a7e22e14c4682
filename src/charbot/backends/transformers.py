"""Hugging Face transformers: a local HF-format directory or a hub id, on CPU or CUDA.

Also the path for models produced by `charbot train` and for DialoGPT-style models (no chat template:
turns joined by EOS, as the original tutorial did). It keeps no prompt cache: dynamic batching left-pads each
batch to its longest prompt, so a conversation's cached keys and values would sit at other positions in every
batch (docs/prompt-cache.md); the llama.cpp backend caches.
"""

from __future__ import annotations

from pathlib import Path

from charbot.backends.base import Prompt
from charbot.backends.transformers_worker import TransformersWorker
from charbot.backends.worker import WorkerBackend
from charbot.chat_template import ChatTemplate
from charbot.errors import ConfigError, ModelError
from charbot.rendering import prompt_text


class TransformersBackend(WorkerBackend):
    name = "transformers"
    default_parallel = 4  # rows per generate call: dynamic batching

    def __init__(self, model: str, *, device: str = "auto", context_window: int | None = None, threads: int | None = None,
                 parallel: int = 4):
        self.model_ref = model
        self.model_id = model
        self.device_name = device
        self._context_override = context_window
        self.threads = threads
        self.parallel = parallel
        self.tokenizer = None
        self.template: ChatTemplate | None = None

    @classmethod
    def from_settings(cls, settings) -> TransformersBackend:
        if not settings.model:
            raise ConfigError("the transformers backend needs a model", "pass --model DIR_OR_HUB_ID (e.g. microsoft/DialoGPT-small)")
        return cls(settings.model, device=settings.device, context_window=settings.context_window, threads=settings.threads,
                   parallel=settings.parallel or cls.default_parallel)

    def open_model(self) -> TransformersWorker:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.threads:
            torch.set_num_threads(self.threads)
        device = self.device_name
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        ref = self.model_ref
        if Path(ref).expanduser().suffix == ".gguf":
            from charbot.models import convert_gguf

            ref = str(convert_gguf(Path(ref).expanduser()))
        try:
            tokenizer = AutoTokenizer.from_pretrained(ref)
            dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
            model = AutoModelForCausalLM.from_pretrained(ref, dtype=dtype).to(device).eval()
        except OSError as exc:
            raise ModelError(
                f"transformers could not load '{self.model_ref}': {str(exc).splitlines()[0]}",
                "pass a local model directory, or a hub id while the hub is reachable (HF_HUB_OFFLINE unset)",
            ) from None
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        self.eos_token = tokenizer.eos_token
        self.template = ChatTemplate.from_tokenizer(tokenizer)
        self.default_prompt_format = "chat" if self.template is not None else "dialogpt"
        limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", 1024)
        self.context_window = min(self._context_override or limit, limit)
        return TransformersWorker(model, tokenizer, device, self.parallel)

    def count_tokens(self, text: str) -> int:
        if self.tokenizer is None:
            return super().count_tokens(text)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_tokens(self, prompt: Prompt) -> list[int]:
        return self.tokenizer(prompt_text(prompt, self.template), add_special_tokens=False)["input_ids"]

    async def aclose(self) -> None:
        await super().aclose()
        self.tokenizer = None
