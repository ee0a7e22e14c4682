"""A model's chat template (the Jinja text shipped in its tokenizer config or GGUF metadata), rendered the way
transformers' `apply_chat_template` renders it.

Serving (llama.cpp and transformers backends), training and evaluation all render through this one class, so a
fine-tuned model is trained and scored on exactly the text serving sends it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from charbot.errors import ModelError


def _raise(message: str):
    raise TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # As transformers does: Jinja's own filter HTML-escapes, which chat templates do not expect.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=16)
def _compile(source: str):
    # Templates from the Hub or a GGUF file are untrusted code: the immutable sandbox, as transformers uses.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


class ChatTemplate:
    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = ""):
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        try:
            self._template = _compile(source)
        except TemplateError as exc:
            raise ModelError(f"the model's chat template does not parse ({exc})", "use --prompt-format dialogpt, or fix the template") from None

    @classmethod
    def from_tokenizer(cls, tokenizer) -> ChatTemplate | None:
        """The template of a transformers tokenizer, or None when it has none."""
        source = getattr(tokenizer, "chat_template", None)
        if not isinstance(source, str) or not source:
            return None
        return cls(source, bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or "")

    def render(self, messages: Sequence[dict], *, add_generation_prompt: bool) -> str:
        try:
            return self._template.render(
                messages=list(messages), add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token, eos_token=self.eos_token,
            )
        except TemplateError as exc:
            raise ModelError(f"the model's chat template refused this conversation ({exc})", "use --prompt-format dialogpt") from None
