"""One renderer for serving, training and evaluation: a conversation → the exact text a local model reads.

Serving builds a `Prompt` (prompt.py) and a backend renders it with `prompt_text`; training and evaluation
render prepared examples with `Renderer.spans`, which is `prompt_text` applied turn by turn. Names, merged turns,
the reply prefix and the DialoGPT join are written here once, so what a model is trained on is what it is served.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from charbot.backends.base import Message, Prompt, PromptFormat
from charbot.chat_template import ChatTemplate
from charbot.errors import ConfigError


def speaker_text(text: str, speaker: str | None) -> str:
    """A turn as the model sees it where speakers are named: "Name: text"."""
    return f"{speaker}: {text}" if speaker else text


def named_replies(messages: Sequence[dict], speaker: str) -> list[dict]:
    """The character's turns as "Speaker: line", as the other speakers' turns are written."""
    return [{**m, "content": speaker_text(m["content"], speaker)} if m["role"] == "assistant" else dict(m) for m in messages]


def merged_turns(turns: Iterable[tuple[str, str]]) -> list[Message]:
    """(role, text) turns as chat messages, consecutive turns of one role joined by newlines: several people
    speaking in a row are one user turn, and templates such as Llama-2's and Gemma's refuse two in a row."""
    messages: list[Message] = []
    for role, text in turns:
        if messages and messages[-1].role == role and role != "system":
            messages[-1] = Message(role, f"{messages[-1].content}\n{text}")  # type: ignore[arg-type]
        else:
            messages.append(Message(role, text))  # type: ignore[arg-type]
    return messages


def dialogpt_text(utterances: Iterable[str], eos: str) -> str:
    """The tutorial's format: utterances joined by EOS, no names, no system message."""
    return "".join(u + eos for u in utterances)


def plain_lines(messages: Sequence[Message]) -> str:
    """Chat messages for a model without a chat template: one line each."""
    return "\n".join(m.content for m in messages) + "\n"


def prompt_text(prompt: Prompt, template: ChatTemplate | None) -> str:
    """What a local model reads for `prompt`: its chat template with the generation prompt and the reply begun,
    plain lines when it has no template, raw text as given."""
    if not prompt.is_chat:
        return prompt.text or ""
    if template is None:
        return plain_lines(prompt.messages)
    messages = [{"role": m.role, "content": m.content} for m in prompt.messages]
    return template.render(messages, add_generation_prompt=True) + prompt.reply_prefix


def example_prompt(messages: Sequence[dict], fmt: PromptFormat, eos: str, speaker: str | None = None) -> Prompt:
    """The prompt serving would send for a prepared example's context (everything before its last reply).

    With `speaker`, the character's turns are named and the reply is begun with the name, as in the Discord
    prompt (prompt.py)."""
    context = [m for m in messages[:-1] if fmt == "chat" or m["role"] != "system"]
    if fmt == "dialogpt":
        return Prompt(text=dialogpt_text((m["content"] for m in context), eos))
    if speaker:
        context = named_replies(context, speaker)
    return Prompt(messages=tuple(Message(m["role"], m["content"]) for m in context), reply_prefix=f"{speaker}:" if speaker else "")


@dataclass(frozen=True)
class Renderer:
    """How one model reads conversations: its prompt format, chat template and end-of-sequence text."""

    fmt: PromptFormat
    template: ChatTemplate | None
    eos: str

    @classmethod
    def for_tokenizer(cls, tokenizer, prompt_format: str = "auto") -> Renderer:
        template = ChatTemplate.from_tokenizer(tokenizer)
        if prompt_format == "auto":
            prompt_format = "chat" if template is not None else "dialogpt"
        elif prompt_format == "chat" and template is None:
            raise ConfigError("prompt_format chat: this tokenizer has no chat template", "use --prompt-format dialogpt (turns joined by EOS)")
        return cls(prompt_format, template, tokenizer.eos_token or "")  # type: ignore[arg-type]

    def prompt(self, messages: Sequence[dict], speaker: str | None = None) -> str:
        """The text serving sends for the example's context, reply begun."""
        return prompt_text(example_prompt(messages, self.fmt, self.eos, speaker), self.template)

    def spans(self, messages: Sequence[dict], speaker: str | None = None) -> tuple[str, list[tuple[int, int]]]:
        """The full text of a conversation and the character spans of every assistant turn (with its end marker).

        Each span starts where serving's prompt for that turn ends (after "Speaker:" when named), so the text
        before a span is exactly what serving sends, and the span is what the model is to write."""
        if self.fmt == "dialogpt":
            kept = [m for m in messages if m["role"] != "system"]
            text = dialogpt_text((m["content"] for m in kept), self.eos)
            ends = [len(dialogpt_text((m["content"] for m in kept[: i + 1]), self.eos)) for i in range(len(kept))]
            return text, [(ends[i - 1] if i else 0, ends[i]) for i, m in enumerate(kept) if m["role"] == "assistant"]
        assert self.template is not None
        shown = named_replies(messages, speaker) if speaker else [dict(m) for m in messages]
        full = self.template.render(shown, add_generation_prompt=False)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = self.prompt(messages[: i + 1], speaker)
            through = self.template.render(shown[: i + 1], add_generation_prompt=False)
            if not full.startswith(through) or not through.startswith(before):
                raise ConfigError("the chat template does not render conversations incrementally", "use --prompt-format dialogpt or a ChatML-style template")
            spans.append((len(before), len(through)))
        return full, spans
