"""The one protocol every backend speaks. Generation never blocks the event loop."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import ClassVar, Literal

from charbot.generation import GenerationSettings

PromptFormat = Literal["chat", "dialogpt"]


@dataclass(frozen=True)
class Message:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class Prompt:
    """Either chat messages (the backend applies the model's chat template) or raw text (DialoGPT style)."""

    messages: tuple[Message, ...] = ()
    text: str | None = None
    # The reply's first words, already written for the model ("Orla:" where speakers are named). Backends
    # that render the chat template themselves continue from it; chat APIs cannot, and ignore it.
    reply_prefix: str = ""

    @property
    def is_chat(self) -> bool:
        return self.text is None


@dataclass(frozen=True)
class Completion:
    text: str
    completion_tokens: int
    prompt_tokens: int = 0
    finish_reason: str = "stop"


@dataclass(frozen=True)
class Capabilities:
    chat: bool = True  # takes chat messages and applies a template
    raw_text: bool = True  # takes a raw text prompt
    streaming: bool = False
    batching: bool = False  # serves several sequences at once
    exact_tokens: bool = False  # count_tokens uses the model's own tokenizer


class Backend(abc.ABC):
    """A model behind `complete`/`stream`. Subclasses set `name` and `capabilities` and fill the hooks."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()

    model_id: str = ""
    context_window: int = 2048
    eos_token: str | None = None
    default_prompt_format: PromptFormat = "chat"
    ready: bool = False

    async def load(self) -> None:
        """Load weights (off the event loop) and warm up. Sets `ready`."""
        self.ready = True

    def count_tokens(self, text: str) -> int:
        # A rough count for backends without a tokenizer at hand; subclasses with one override this.
        return max(1, len(text) // 3)

    @abc.abstractmethod
    async def complete(self, prompt: Prompt, settings: GenerationSettings) -> Completion: ...

    async def stream(self, prompt: Prompt, settings: GenerationSettings) -> AsyncIterator[str]:
        """Text pieces as they are generated. Backends that cannot stream yield the whole reply once."""
        completion = await self.complete(prompt, settings)
        yield completion.text

    async def aclose(self) -> None:
        self.ready = False

    def describe(self) -> str:
        return f"{self.name}:{self.model_id}"
