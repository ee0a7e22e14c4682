"""Turn persona + memory + the new message into a prompt that fits the model's context.

Priority when space is short: the persona's core text and the new message always stay; example dialogue
goes first; then the oldest turns. A new message too big for the context on its own is cut to fit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from charbot.backends.base import Message, Prompt, PromptFormat
from charbot.memory import Turn
from charbot.persona import RenderedPersona

MESSAGE_OVERHEAD = 5  # chat-template markers per message (<|im_start|>role\n … <|im_end|>\n)


@dataclass(frozen=True)
class BuiltPrompt:
    prompt: Prompt
    turns_kept: int
    turns_available: int
    examples_kept: bool
    prompt_tokens: int


def speaker_text(turn_text: str, speaker: str | None) -> str:
    return f"{speaker}: {turn_text}" if speaker else turn_text


class PromptBuilder:
    def __init__(
        self,
        count_tokens: Callable[[str], int],
        *,
        context_window: int,
        max_new_tokens: int,
        fmt: PromptFormat,
        eos_token: str | None = None,
    ):
        self.count = count_tokens
        self.fmt = fmt
        self.eos = eos_token or ""
        # Room for the reply, plus slack for tokenizer differences between our count and the template's.
        self.budget = max(64, context_window - max_new_tokens - 16)

    def build(self, persona: RenderedPersona, history: Sequence[Turn], text: str, speaker: str | None) -> BuiltPrompt:
        if self.fmt == "dialogpt":
            return self._dialogpt(history, Turn("user", self._fit(text, self.budget - 1), speaker))
        fixed = self.count(persona.system + (f"\n{persona.post_history}" if persona.post_history else ""))
        room = self.budget - fixed - 2 * MESSAGE_OVERHEAD - self.count(speaker_text("", speaker))
        return self._chat(persona, history, Turn("user", self._fit(text, room), speaker))

    def _fit(self, text: str, room: int) -> str:
        """`text`, or its start cut at a word so that it costs at most `room` tokens: an oversized message
        (a pasted essay, a Nitro-length post) is answered from its beginning instead of overflowing the model."""
        room = max(room - 2, 8)  # 2 for the ellipsis
        if self.count(text) <= room:
            return text
        lo, hi = 0, len(text)
        while lo < hi:  # the longest prefix that fits; a dozen tokenizations for a 4000-character message
            mid = (lo + hi + 1) // 2
            if self.count(text[:mid]) <= room:
                lo = mid
            else:
                hi = mid - 1
        cut = text[:lo]
        at = cut.rfind(" ")
        return (cut[:at] if at > lo // 2 else cut).rstrip() + " …"

    # --- chat-template models ------------------------------------------------------------------------
    def _chat(self, persona: RenderedPersona, history: Sequence[Turn], new: Turn) -> BuiltPrompt:
        system_core = persona.system + (f"\n{persona.post_history}" if persona.post_history else "")
        # Where speakers are named ("sam: hi"), the character is named too: a small model shown only the
        # other side's "Name: " lines writes its reply as one of them, which is then an unusable reply.
        char = persona.char if new.speaker is not None else None

        def shown(turn: Turn) -> str:
            return speaker_text(turn.content, char if turn.role == "assistant" else turn.speaker)

        cost = [self.count(shown(t)) + MESSAGE_OVERHEAD for t in history]
        fixed = self.count(system_core) + MESSAGE_OVERHEAD + self.count(shown(new)) + 2 * MESSAGE_OVERHEAD
        # example dialogue and the greeting show the character's voice; they are the first to go
        examples_cost = (self.count(persona.examples) + 2 if persona.examples else 0) + (
            self.count(speaker_text(persona.greeting, char)) + MESSAGE_OVERHEAD if persona.greeting else 0
        )
        has_examples = bool(persona.examples or persona.greeting)
        keep_examples = has_examples and fixed + examples_cost + sum(cost) <= self.budget
        used = fixed + (examples_cost if keep_examples else 0)
        kept = 0
        for c in reversed(cost):  # newest first
            if used + c > self.budget:
                break
            used += c
            kept += 1
        system = system_core + (f"\n\n{persona.examples}" if keep_examples and persona.examples else "")
        messages = [Message("system", system)]
        if keep_examples and persona.greeting:
            messages.append(Message("assistant", speaker_text(persona.greeting, char)))
        for turn in list(history)[len(history) - kept :] + [new]:
            messages.append(Message(turn.role, shown(turn)))  # type: ignore[arg-type]
        prefix = f"{char}:" if char else ""  # and the reply is begun as the character's line
        return BuiltPrompt(Prompt(messages=tuple(messages), reply_prefix=prefix), kept, len(history), keep_examples, used)

    # --- DialoGPT-style models: turns joined by EOS, no persona (the model cannot take one) ------------
    def _dialogpt(self, history: Sequence[Turn], new: Turn) -> BuiltPrompt:
        eos_cost = 1
        used = self.count(new.content) + eos_cost
        kept = 0
        for turn in reversed(history):
            c = self.count(turn.content) + eos_cost
            if used + c > self.budget:
                break
            used += c
            kept += 1
        turns = list(history)[len(history) - kept :] + [new]
        text = "".join(t.content + self.eos for t in turns)
        return BuiltPrompt(Prompt(text=text), kept, len(history), False, used)
