"""Hugging Face transformers: a local HF-format directory or a hub id, on CPU or CUDA.

Also the path for models produced by `charbot train` and for DialoGPT-style models (no chat template:
turns joined by EOS, as the original tutorial did).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from charbot.backends._threads import iterate_in_thread
from charbot.backends.base import Backend, Capabilities, Completion, Prompt
from charbot.errors import ModelError
from charbot.generation import GenerationSettings


class TransformersBackend(Backend):
    name = "transformers"
    capabilities = Capabilities(chat=True, raw_text=True, streaming=True, batching=False, exact_tokens=True)

    def __init__(self, model: str, *, device: str = "auto", context_window: int | None = None, threads: int | None = None):
        self.model_ref = model
        self.model_id = model
        self.device_name = device
        self._context_override = context_window
        self.threads = threads
        self.model = None
        self.tokenizer = None
        self._lock = threading.Lock()

    async def load(self) -> None:
        if self.model is None:
            await asyncio.to_thread(self._load)
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
        if path.suffix == ".gguf":  # dequantised by transformers (needs the `gguf` package)
            kwargs["gguf_file"] = path.name
            ref = str(path.parent)
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

    def _inputs(self, prompt: Prompt):
        tok = self.tokenizer
        if prompt.is_chat and tok.chat_template:
            messages = [{"role": m.role, "content": m.content} for m in prompt.messages]
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        elif prompt.is_chat:  # chat messages for a model without a template: plain "Name: text" lines
            text = "\n".join(m.content for m in prompt.messages) + "\n"
        else:
            text = prompt.text
        return tok(text, return_tensors="pt", add_special_tokens=False).to(self.device)

    def _generate_kwargs(self, settings: GenerationSettings) -> dict:
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
        if settings.stop:
            kw.update(stop_strings=list(settings.stop), tokenizer=self.tokenizer)
        return kw

    def _complete_sync(self, prompt: Prompt, settings: GenerationSettings) -> Completion:
        import torch

        with self._lock, torch.inference_mode():
            if settings.seed is not None:
                torch.manual_seed(settings.seed)
            inputs = self._inputs(prompt)
            out = self.model.generate(**inputs, **self._generate_kwargs(settings))
        new = out[0, inputs["input_ids"].shape[1] :]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        return Completion(text, int(new.shape[0]), int(inputs["input_ids"].shape[1]))

    async def complete(self, prompt: Prompt, settings: GenerationSettings) -> Completion:
        return await asyncio.to_thread(self._complete_sync, prompt, settings)

    async def stream(self, prompt: Prompt, settings: GenerationSettings) -> AsyncIterator[str]:
        from transformers import TextIteratorStreamer

        def pieces():
            import torch

            streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
            inputs = self._inputs(prompt)
            kw = self._generate_kwargs(settings)
            error: list[BaseException] = []

            def run():
                try:
                    with torch.inference_mode():
                        if settings.seed is not None:
                            torch.manual_seed(settings.seed)
                        self.model.generate(**inputs, **kw, streamer=streamer)
                except BaseException as exc:
                    error.append(exc)
                    streamer.end()

            worker = threading.Thread(target=run, daemon=True)
            worker.start()
            for text in streamer:
                if text:
                    yield text
            worker.join()
            if error:
                raise error[0]

        async for piece in iterate_in_thread(pieces, self._lock):
            yield piece

    async def aclose(self) -> None:
        self.model = None
        self.ready = False
