"""Scene turns (Discord --cast): a character answers another character's line, with no new message from a
person, and sees the other characters' lines as turns of named speakers, like the people's."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from charbot.memory import Turn
from charbot.persona import CharacterCard

if TYPE_CHECKING:
    from charbot.engine import Deliver, Engine, Reply


def seen_by(character: str, history: Sequence[Turn]) -> list[Turn]:
    """`history` as `character` sees it: lines other characters said (a scene, or before a /persona switch) are
    turns of other named speakers, like the people's, not the character's own."""
    return [Turn("user", t.content, t.speaker) if t.role == "assistant" and t.speaker not in (None, character) else t for t in history]


async def follow_up(
    engine: Engine, conversation_id: str, persona: CharacterCard, *, deliver: Deliver | None = None, deadline: float | None = None,
    wanted: Callable[[], bool] | None = None,
) -> Reply | None:
    """A scene turn: `persona` answers the conversation's last line (another character's), with no new message
    from a person; only its line is remembered. None when there is nothing to answer, or when `wanted()`
    says no once the turn's slot is had (a person spoke meanwhile: their turn went first, this one is stale).
    The prompt carries the conversation-and-character cache key, as a reply's does: each character of a scene
    keeps its own state in the backend's prompt cache."""
    async with engine.scheduler.slot(conversation_id, deadline=deadline) as held:
        history, start = await engine._history(conversation_id)
        if not history or (wanted is not None and not wanted()):
            return None
        last = seen_by(persona.name, history[-1:])[0]
        reply = await engine._reply(conversation_id, last.content, last.speaker, None, persona, history[:-1], None, start)
        held.generated()
        if deliver is not None:
            await deliver(reply)
        await engine._remember(conversation_id, [Turn("assistant", reply.text, reply.persona)])
        return reply
