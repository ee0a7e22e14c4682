"""llama.cpp through llama-cpp-python: GGUF models on CPU, the default backend."""

from __future__ import annotations

import asyncio
import os
import random
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from charbot.backends._threads import iterate_in_thread
from charbot.backends.base import Backend, Capabilities, Completion, Prompt
from charbot.errors import BackendError, ModelError
from charbot.generation import GenerationSettings, NoRepeatNGram
from charbot.models import check_gguf


class NoRepeatNGramProcessor:
    """llama-cpp-python logits processor for `no_repeat_ngram_size` over the generated tokens."""

    def __init__(self, n: int):
        self.ngrams = NoRepeatNGram(n)
        self.prompt_len: int | None = None

    def __call__(self, input_ids, scores):
        if self.prompt_len is None:
            self.prompt_len = len(input_ids)
        else:
            for token in input_ids[self.prompt_len + len(self.ngrams.tokens) :]:
                self.ngrams.push(int(token))
        banned = self.ngrams.banned()
        if banned:
            scores[list(banned)] = -float("inf")
        return scores


class LlamaCppBackend(Backend):
    name = "llamacpp"
    capabilities = Capabilities(chat=True, raw_text=True, streaming=True, batching=False, exact_tokens=True)

    def __init__(self, model_path: str | Path, *, context_window: int = 2048, threads: int | None = None, seed: int | None = None):
        self.model_path = check_gguf(Path(model_path).expanduser())
        self.model_id = self.model_path.name
        self.context_window = context_window
        self.threads = threads or os.cpu_count() or 1
        self.seed = seed
        self._llm = None
        self._formatter = None
        self._lock = threading.Lock()  # one llama.cpp context: one generation at a time

    async def load(self) -> None:
        if self._llm is None:
            self._llm = await asyncio.to_thread(self._load)
        self.ready = True

    def _load(self):
        from llama_cpp import Llama  # imported here so `charbot --help` stays fast

        try:
            llm = Llama(
                model_path=str(self.model_path),
                n_ctx=self.context_window,
                n_threads=self.threads,
                n_threads_batch=self.threads,
                seed=self.seed if self.seed is not None else 0xFFFFFFFF,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelError(
                f"llama.cpp could not load {self.model_path} ({exc})", "the file may be truncated or corrupt: re-download or re-export it"
            ) from None
        self.eos_token = llm.detokenize([llm.token_eos()], special=True).decode("utf-8", "ignore") or None
        template = llm.metadata.get("tokenizer.chat_template")
        if template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            # Rendered here rather than by create_chat_completion, so a reply can continue from `reply_prefix`.
            bos = llm.detokenize([llm.token_bos()], special=True).decode("utf-8", "ignore") if llm.token_bos() >= 0 else ""
            self._formatter = Jinja2ChatFormatter(template, eos_token=self.eos_token or "", bos_token=bos)
        else:
            self.default_prompt_format = "dialogpt"
        return llm

    @property
    def llm(self):
        if self._llm is None:
            raise BackendError("the llama.cpp model is not loaded yet", "call load() first")
        return self._llm

    def count_tokens(self, text: str) -> int:
        if self._llm is None:
            return super().count_tokens(text)
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def _kwargs(self, settings: GenerationSettings) -> dict:
        kw = dict(
            max_tokens=settings.max_new_tokens,
            temperature=settings.temperature if settings.do_sample else 0.0,
            top_k=settings.top_k,
            top_p=settings.top_p,
            repeat_penalty=settings.repetition_penalty,
            stop=list(settings.stop) or None,
        )
        # llama-cpp-python reuses one fixed seed unless told otherwise: every "Hello" would get the same reply.
        kw["seed"] = settings.seed if settings.seed is not None else random.getrandbits(31)
        if settings.no_repeat_ngram_size > 0:
            from llama_cpp import LogitsProcessorList

            kw["logits_processor"] = LogitsProcessorList([NoRepeatNGramProcessor(settings.no_repeat_ngram_size)])
        return kw

    def _input(self, prompt: Prompt) -> str | list[int]:
        if not prompt.is_chat:
            return prompt.text or ""
        if self._formatter is None:  # chat messages for a model without a template: plain "Name: text" lines
            return "\n".join(m.content for m in prompt.messages) + "\n"
        messages = [{"role": m.role, "content": m.content} for m in prompt.messages]
        text = self._formatter(messages=messages).prompt + prompt.reply_prefix
        # as create_chat_completion does: the template writes any BOS itself
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def _call(self, prompt: Prompt, settings: GenerationSettings, stream: bool):
        return self.llm.create_completion(prompt=self._input(prompt), stream=stream, **self._kwargs(settings))

    def _complete_sync(self, prompt: Prompt, settings: GenerationSettings) -> Completion:
        with self._lock:
            out = self._call(prompt, settings, stream=False)
        choice = out["choices"][0]
        text = choice["text"]
        usage = out.get("usage", {})
        return Completion(text or "", usage.get("completion_tokens", 0), usage.get("prompt_tokens", 0), choice.get("finish_reason") or "stop")

    async def complete(self, prompt: Prompt, settings: GenerationSettings) -> Completion:
        return await asyncio.to_thread(self._complete_sync, prompt, settings)

    async def stream(self, prompt: Prompt, settings: GenerationSettings) -> AsyncIterator[str]:
        def pieces():
            for chunk in self._call(prompt, settings, stream=True):
                choice = chunk["choices"][0]
                text = choice.get("text")
                if text:
                    yield text

        async for piece in iterate_in_thread(pieces, self._lock):
            yield piece

    async def aclose(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            await asyncio.to_thread(llm.close)
        self.ready = False
