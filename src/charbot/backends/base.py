"""The one protocol every backend speaks. Generation never blocks the event loop.

A backend is one class: `from_settings` builds it (so adding one touches its own file and one registry line in
`backends/__init__.py`), `load` readies it, `complete`/`stream` generate, `status` and `parallel` tell the
health page and the scheduler what they need.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from charbot.generation import GenerationSettings

if TYPE_CHECKING:
    from charbot.config import Settings

PromptFormat = Literal["chat", "dialogpt"]


@dataclass(frozen=True)
class Message:
    role: Literal["system", "user", "assistant"]
    content: str


KEY_SEP = "\x1f"  # between a cache key's conversation and character: in neither's text


def cache_key(conversation: str, character: str) -> str:
    """One key per character in a conversation: in a scene, each character's prompt starts with its own persona,
    so each keeps a state of its own rather than replacing the other's."""
    return f"{conversation}{KEY_SEP}{character}"


def of_conversation(key: str | None, conversation: str) -> bool:
    return key is not None and (key == conversation or key.startswith(conversation + KEY_SEP))


@dataclass(frozen=True)
class Prompt:
    """Either chat messages (the backend applies the model's chat template) or raw text (DialoGPT style)."""

    messages: tuple[Message, ...] = ()
    text: str | None = None
    # The reply's first words, already written for the model ("Orla:" where speakers are named). Backends
    # that render the chat template themselves continue from it; chat APIs cannot, and ignore it.
    reply_prefix: str = ""
    # The conversation and character it belongs to (`cache_key()`): a backend that keeps prompts' KV states
    # tags them with it, keeps one per key, and forgets a conversation's when it is reset. Never part of what
    # the model reads.
    cache_key: str | None = None

    @property
    def is_chat(self) -> bool:
        return self.text is None


@dataclass(frozen=True)
class Completion:
    text: str
    completion_tokens: int
    prompt_tokens: int = 0
    finish_reason: str = "stop"


class Backend(abc.ABC):
    """A model behind `complete`/`stream`. Subclasses set `name` and fill the abstract methods."""

    name: ClassVar[str]
    # Generations served at once when the settings do not say (`parallel` empty).
    default_parallel: ClassVar[int] = 1

    model_id: str = ""
    context_window: int = 2048
    eos_token: str | None = None
    default_prompt_format: PromptFormat = "chat"
    ready: bool = False
    # How many generations it serves at once; the scheduler admits no more than this.
    parallel: int = 1

    @classmethod
    @abc.abstractmethod
    def from_settings(cls, settings: Settings) -> Backend:
        """The backend the settings describe; a ConfigError says what is missing."""

    _status: str | None = None

    @property
    def status(self) -> str:
        """One line for the health page (never a secret): what a backend set, else ready or loading."""
        return self._status or ("ready" if self.ready else "loading")

    @status.setter
    def status(self, value: str) -> None:
        self._status = value

    async def load(self) -> None:
        """Load weights (off the event loop) and warm up. Sets `ready`."""
        self.ready = True

    def render(self, prompt: Prompt) -> str | None:
        """The exact text the model reads for `prompt` where it is rendered here (local models); None where a
        server applies its own chat template."""
        return None

    def count_tokens(self, text: str) -> int:
        # A rough count for backends without a tokenizer at hand; subclasses with one override this.
        return max(1, len(text) // 3)

    @abc.abstractmethod
    async def complete(self, prompt: Prompt, settings: GenerationSettings) -> Completion: ...

    async def stream(self, prompt: Prompt, settings: GenerationSettings) -> AsyncIterator[str]:
        """Text pieces as they are generated. Backends that cannot stream yield the whole reply once."""
        completion = await self.complete(prompt, settings)
        yield completion.text

    def forget(self, cache_key: str) -> None:
        """Drop whatever the backend kept of conversation `cache_key` (its prompts' KV states)."""

    def cache_stats(self) -> dict[str, int]:
        """Counters of a prompt cache (hits, misses, saved_tokens, evicted_bytes, …); empty without one."""
        return {}

    async def aclose(self) -> None:
        self.ready = False

    def describe(self) -> str:
        return f"{self.name}:{self.model_id}"
