"""Turn persona + memory + the new message into a prompt that fits the model's context.

Priority when space is short: the persona's core text and the new message always stay; then the lorebook
entries that fired (inside their own budget, constants first, then by priority, each whole or not at all);
example dialogue goes first; then the oldest turns. A new message too big for the context on its own is cut
to fit.

Both formats show the same turns (rendering.py): other speakers named where speakers are named, consecutive
turns of one side joined; chat models get them as messages under the persona, DialoGPT-style models as
utterances joined by EOS with no persona (the model cannot take one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from charbot.backends.base import Prompt, PromptFormat
from charbot.lore_scan import Activation, scan
from charbot.lorebook import Lorebook
from charbot.memory import Turn
from charbot.persona import CharacterCard, RenderedPersona, render, substitute
from charbot.rendering import dialogpt_text, merged_turns, speaker_text

MESSAGE_OVERHEAD = 5  # chat-template markers per message (<|im_start|>role\n … <|im_end|>\n)
EOS_COST = 1  # the EOS after each DialoGPT utterance
# When old turns must go, they go in chunks: the prompt then starts at the same turn for several replies, and a
# backend that keeps the previous prompt's KV state reads only the new turns (one turn per reply would change
# the start every time, and every reply would read the whole history again).
DROP_CHUNK = 8
LORE_SHARE = 0.25  # of the prompt budget, at most, for lorebook entries (SillyTavern's default world-info budget)


@dataclass(frozen=True)
class LoreUse:
    """A lorebook entry that fired: whether it went into the prompt (`placed`), at what cost, and why."""

    entry: Activation
    tokens: int
    placed: bool
    note: str  # where it went, or why it was left out


@dataclass(frozen=True)
class BuiltPrompt:
    prompt: Prompt
    turns_kept: int
    turns_available: int
    examples_kept: bool
    prompt_tokens: int
    lore: tuple[LoreUse, ...] = ()
    lore_notes: tuple[str, ...] = ()  # regex keys that were invalid or ran out of time


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

    def build(
        self, persona: RenderedPersona, history: Sequence[Turn], text: str, speaker: str | None, lore: Sequence[Activation] = (),
        book_budgets: dict[str, int] | None = None, history_start: int = 0,
    ) -> BuiltPrompt:
        """`history_start`: how many turns of the conversation come before `history` (for chunked dropping)."""
        chat = self.fmt == "chat"
        # Where speakers are named ("sam: hi"), the character is named too: a small model shown only the
        # other side's "Name: " lines writes its reply as one of them, which is then an unusable reply.
        char = persona.char if chat and speaker is not None else None

        def shown(turn: Turn) -> str:
            return speaker_text(turn.content, char if turn.role == "assistant" else turn.speaker)

        post = f"\n{persona.post_history}" if persona.post_history else ""
        system = persona.system + post if chat else ""
        # system message and the generation prompt (chat), then the new message
        fixed = (self.count(system) + 2 * MESSAGE_OVERHEAD) if chat else 0
        room = self.budget - fixed - self.count(speaker_text("", speaker)) - self.per_turn
        new = Turn("user", self._fit(text, room), speaker)
        used = fixed + self.count(shown(new)) + self.per_turn
        uses = self._place_lore(persona, lore, self.budget - used, book_budgets or {}) if chat else self._no_lore(lore)
        placed = [u.entry for u in uses if u.placed]
        used += sum(u.tokens for u in uses if u.placed)
        if chat:
            system = persona.with_lore([e.content for e in placed if e.position == "before_char"],
                                       [e.content for e in placed if e.position == "after_char"]) + post
        examples = self._examples(persona, char) if chat else []
        examples_cost = sum(self.count(t) + (2 if role == "system" else MESSAGE_OVERHEAD) for role, t in examples)
        cost = [self.count(shown(t)) + self.per_turn for t in history]
        keep_examples = bool(examples) and used + examples_cost + sum(cost) <= self.budget
        used += examples_cost if keep_examples else 0
        # History trimming: the newest turns that fit the budget left.
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
            prompt = Prompt(text=dialogpt_text((m.content for m in merged_turns(turns)), self.eos))
            return BuiltPrompt(prompt, kept, len(history), False, used, tuple(uses))
        turns = self._at_depth(turns, [e for e in placed if e.position == "depth"])
        head = [("system", system + "".join(f"\n\n{t}" for role, t in examples if role == "system" and keep_examples))]
        head += [(role, t) for role, t in examples if role != "system" and keep_examples]
        prefix = f"{char}:" if char else ""  # and the reply is begun as the character's line
        prompt = Prompt(messages=tuple(merged_turns(head + turns)), reply_prefix=prefix)
        return BuiltPrompt(prompt, kept, len(history), keep_examples, used, tuple(uses))

    def _place_lore(self, persona: RenderedPersona, fired: Sequence[Activation], room: int, book_budgets: dict[str, int]) -> list[LoreUse]:
        """The fired entries that fit, whole: constants first, then by priority; the text of each with its
        {{char}}/{{user}} filled in. The budget is the smallest of what is left of the prompt, LORE_SHARE of
        it, and the entry's book's own `token_budget`."""
        budget = min(room, int(self.budget * LORE_SHARE))
        spent: dict[str, int] = {}
        uses: dict[int, LoreUse] = {}  # by the entry's place in `fired`
        ranked = sorted(enumerate(fired), key=lambda p: (not p[1].constant, -p[1].priority, p[0]))
        for i, entry in ranked:
            entry = replace(entry, content=substitute(entry.content, persona.char, persona.user))
            tokens = self.count(entry.content) + (MESSAGE_OVERHEAD if entry.position == "depth" else 1)
            cap = book_budgets.get(entry.book)
            book_left = budget if cap is None else cap - spent.get(entry.book, 0)
            if tokens > min(budget, book_left):
                limit = "the book's token_budget" if book_left < budget else "the lorebook budget"
                uses[i] = LoreUse(entry, tokens, False, f"left out: {tokens} tokens do not fit {limit} ({min(budget, book_left)} left)")
                continue
            budget -= tokens
            spent[entry.book] = spent.get(entry.book, 0) + tokens
            where = f"at depth {entry.depth} as {entry.role}" if entry.position == "depth" else entry.position.replace("_", " ")
            uses[i] = LoreUse(entry, tokens, True, where)
        return [uses[i] for i in sorted(uses, key=lambda i: (fired[i].order, i))]  # lower insertion_order first

    @staticmethod
    def _at_depth(turns: list[tuple[str, str]], entries: list[Activation]) -> list[tuple[str, str]]:
        """Depth entries among the turns: depth N goes before the Nth newest message (0: after the newest;
        deeper than the conversation: before its oldest message)."""
        if not entries:
            return turns
        out: list[tuple[str, str]] = []
        for i in range(len(turns) + 1):
            out += [(e.role, e.content) for e in entries if max(0, len(turns) - e.depth) == i]
            out += turns[i : i + 1]
        return out

    @staticmethod
    def _no_lore(fired: Sequence[Activation]) -> list[LoreUse]:
        return [LoreUse(e, 0, False, "left out: the dialogpt format has no persona text") for e in fired]

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


def card_prompt(
    builder: PromptBuilder, card: CharacterCard, user_name: str, history: Sequence[Turn], text: str, speaker: str | None,
    lorebooks: Sequence[tuple[str, Lorebook]] = (), history_start: int = 0,
) -> BuiltPrompt:
    """The prompt for `text` after `history` with `card` as persona: the lorebook entries that the conversation
    fires (the card's own book first, as SillyTavern orders them, then `lorebooks`) placed inside the budget."""
    books = ([(f"{card.name}'s card", card.book)] if card.book is not None and card.book.entries else []) + list(lorebooks)
    lore = scan(books, [t.content for t in history] + [text]) if books else None
    built = builder.build(
        render(card, user_name), history, text, speaker, lore.fired if lore else (),
        {name: book.token_budget for name, book in books if book.token_budget is not None}, history_start,
    )
    return replace(built, lore_notes=tuple(lore.notes)) if lore and lore.notes else built
