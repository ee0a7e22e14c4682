"""Turn persona + memory + the new message into a prompt that fits the model's context.

Priority when space is short: the persona's core text and the new message always stay; example dialogue
goes first; then the oldest turns. A new message too big for the context on its own is cut to fit.

Both formats show the same turns (rendering.py): other speakers named where speakers are named, consecutive
turns of one side joined; chat models get them as messages under the persona, DialoGPT-style models as
utterances joined by EOS with no persona (the model cannot take one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from charbot.backends.base import Prompt, PromptFormat
from charbot.memory import Turn
from charbot.persona import RenderedPersona
from charbot.rendering import dialogpt_text, merged_turns, speaker_text

MESSAGE_OVERHEAD = 5  # chat-template markers per message (<|im_start|>role\n … <|im_end|>\n)
EOS_COST = 1  # the EOS after each DialoGPT utterance
# When old turns must go, they go in chunks: the prompt then starts at the same turn for several replies, and a
# backend that keeps the previous prompt's KV state reads only the new turns (one turn per reply would change
# the start every time, and every reply would read the whole history again).
DROP_CHUNK = 8


@dataclass(frozen=True)
class BuiltPrompt:
    prompt: Prompt
    turns_kept: int
    turns_available: int
    examples_kept: bool
    prompt_tokens: int


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
        self.per_turn = MESSAGE_OVERHEAD if fmt == "chat" else EOS_COST
        # Room for the reply, plus slack for tokenizer differences between our count and the template's.
        self.budget = max(64, context_window - max_new_tokens - 16)

    def build(self, persona: RenderedPersona, history: Sequence[Turn], text: str, speaker: str | None, history_start: int = 0) -> BuiltPrompt:
        """`history_start`: how many turns of the conversation come before `history` (for chunked dropping)."""
        chat = self.fmt == "chat"
        # Where speakers are named ("sam: hi"), the character is named too: a small model shown only the
        # other side's "Name: " lines writes its reply as one of them, which is then an unusable reply.
        char = persona.char if chat and speaker is not None else None

        def shown(turn: Turn) -> str:
            return speaker_text(turn.content, char if turn.role == "assistant" else turn.speaker)

        system = persona.system + (f"\n{persona.post_history}" if persona.post_history else "") if chat else ""
        # system message and the generation prompt (chat), then the new message
        fixed = (self.count(system) + 2 * MESSAGE_OVERHEAD) if chat else 0
        room = self.budget - fixed - self.count(speaker_text("", speaker)) - self.per_turn
        new = Turn("user", self._fit(text, room), speaker)
        used = fixed + self.count(shown(new)) + self.per_turn
        examples = self._examples(persona, char) if chat else []
        examples_cost = sum(self.count(t) + (2 if role == "system" else MESSAGE_OVERHEAD) for role, t in examples)
        cost = [self.count(shown(t)) + self.per_turn for t in history]
        keep_examples = bool(examples) and used + examples_cost + sum(cost) <= self.budget
        used += examples_cost if keep_examples else 0
        kept = 0
        for c in reversed(cost):  # newest first
            if used + c > self.budget:
                break
            used += c
            kept += 1
        if kept < len(history):  # the first kept turn moves to a chunk boundary of the whole conversation
            first = history_start + len(history) - kept
            dropped = -first % DROP_CHUNK
            used -= sum(cost[len(history) - kept : len(history) - kept + dropped])
            kept -= min(dropped, kept)
        turns = [(t.role, shown(t)) for t in [*history[len(history) - kept :], new]]
        if not chat:
            return BuiltPrompt(Prompt(text=dialogpt_text((m.content for m in merged_turns(turns)), self.eos)), kept, len(history), False, used)
        head = [("system", system + "".join(f"\n\n{t}" for role, t in examples if role == "system" and keep_examples))]
        head += [(role, t) for role, t in examples if role != "system" and keep_examples]
        prefix = f"{char}:" if char else ""  # and the reply is begun as the character's line
        return BuiltPrompt(Prompt(messages=tuple(merged_turns(head + turns)), reply_prefix=prefix), kept, len(history), keep_examples, used)

    @staticmethod
    def _examples(persona: RenderedPersona, char: str | None) -> list[tuple[str, str]]:
        """Example dialogue (in the system message) and the greeting (the character's opening turn, as in
        SillyTavern): they show the character's voice and are the first to go."""
        parts = [("system", persona.examples)] if persona.examples else []
        if persona.greeting:
            parts.append(("assistant", speaker_text(persona.greeting, char)))
        return parts

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
