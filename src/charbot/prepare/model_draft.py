"""`prepare --draft-with MODEL`: a model (any backend: the embedded one, a local GGUF or HF model, a hosted
or self-hosted server) rewrites a drafted card's description and personality from the measured draft and
sampled real lines. Each paragraph is asked for on its own, the reply begun with its label where the backend
can continue a reply (local models), so that even a small model answers in the shape asked for. The
statistical draft stays wherever the model's paragraph is unusable."""

from __future__ import annotations

import asyncio
import re

from charbot.backends.base import Backend, Message, Prompt
from charbot.generation import GenerationSettings
from charbot.persona import CharacterCard

SAMPLE_LINES = 12
MAX_NEW_TOKENS = 120
ASK = {
    "description": "Write one short paragraph, in the third person, about who {name} is: the people around them and where they appear.",
    "personality": "Write one short paragraph, in the third person, about {name}'s temperament and the way {name} speaks.",
}


def request(card: CharacterCard, lines: list[str], field: str) -> Prompt:
    d = card.data
    facts = f"Character: {d.name}\nFacts: {d.description}\nSpeech, measured: {d.personality or 'no figures'}"
    sample = "\n".join(f"- {line}" for line in lines[:SAMPLE_LINES])
    system = f"You write character cards for role-play. {ASK[field].format(name=d.name)} Do not quote the lines."
    return Prompt(messages=(Message("system", system), Message("user", f"{facts}\n\nLines {d.name} says:\n{sample}")),
                  reply_prefix=f"{field.capitalize()}:")


_LABEL = re.compile(r"(description|personality)\s*:", re.IGNORECASE)


def usable(reply: str) -> str | None:
    """The reply's first paragraph (a label it repeats removed, anything after a blank line or the next label
    cut), or None when it is too short to be one."""
    text = _LABEL.sub("", reply.strip(), count=1) if _LABEL.match(reply.strip()) else reply
    text = " ".join(re.split(r"\n\s*\n", _LABEL.split(text)[0].strip())[0].split())
    return text if len(text.split()) >= 8 else None


def redraft_all(cards: dict[str, tuple[CharacterCard, list[str]]], backend: Backend) -> dict[str, CharacterCard]:
    """Each card (with its sampled lines) redrafted by `backend`, in one event loop; the model is closed after."""
    settings = GenerationSettings(max_new_tokens=MAX_NEW_TOKENS, temperature=0.3, do_sample=False, seed=0).with_stop(
        "\n\n", "Description:", "Personality:"
    )

    async def run() -> dict[str, CharacterCard]:
        try:
            if not backend.ready:
                await backend.load()
            out = {}
            for name, (card, lines) in cards.items():
                found = {}
                for field in ASK:
                    paragraph = usable((await backend.complete(request(card, lines, field), settings)).text)
                    if paragraph:
                        found[field] = paragraph
                out[name] = _with(card, found, backend)
            return out
        finally:
            await backend.aclose()

    return asyncio.run(run())


def _with(card: CharacterCard, found: dict[str, str], backend: Backend) -> CharacterCard:
    if found:
        measured = " ".join(getattr(card.data, f) for f in found)
        note = f" The {' and '.join(found)} were written by {backend.describe()} from sampled lines; the measured draft was: {measured}"
    else:
        note = f" ({backend.describe()} gave no usable draft; the measured one is kept.)"
    data = card.data.model_copy(update={**found, "creator_notes": card.data.creator_notes + note})
    return card.model_copy(update={"data": data})
