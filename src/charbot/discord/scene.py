"""Scenes: a person's message is answered by one character of the channel's cast, then others may answer
that character, up to `discord_scene_turns` character turns per message from a person.

The loop guard is structural: a scene runs only inside the handling of a person's message, so characters
never talk on without one, and nothing the cast (or any other webhook or bot) posts starts anything. A
new message from a person, or /reset, ends the channel's scene: its remaining turns are not taken. A
scene turn waits in the same queue as everyone's replies and yields to people: when anyone waits for the
model, the scene rests; each turn restarts the cooldown of the person whose message started it."""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING

import discord

from charbot.discord.cast import Cast, Character
from charbot.discord.policy import conversation_id
from charbot.discord.speakers import first_speaker, next_speaker
from charbot.discord.webhooks import CastPoster
from charbot.errors import BackendError, BusyError
from charbot.memory import MemoryStoreError
from charbot.scheduler import DeadlineExceeded

if TYPE_CHECKING:
    from charbot.discord.bot import CharBot

log = logging.getLogger(__name__)


class Scenes:
    def __init__(self, bot: "CharBot", cast: Cast, *, max_turns: int, rng: random.Random | None = None):
        self.bot = bot
        self.cast = cast
        self.max_turns = max_turns
        self.rng = rng or random.Random()
        self.poster = CastPoster(bot, ping_author=bot.settings.discord.ping_author)
        self._current: dict[int, object] = {}  # channel id -> the scene running there
        self.stats = {name: {"replies": 0, "errors": 0} for name in cast.names}  # for /healthz

    # --- the channel's cast ------------------------------------------------------------------------
    async def active(self, channel) -> list[str]:
        """The channel's cast (a thread without one of its own: its parent's), else the whole cast; names
        whose card is no longer loaded are skipped. Raises MemoryStoreError when memory cannot be read."""
        engine = self.bot.engine
        stored = await engine.channel_cast(conversation_id(channel.id))
        parent = getattr(channel, "parent_id", None)
        if stored is None and parent is not None:
            stored = await engine.channel_cast(conversation_id(parent))
        names = [n for n in stored or () if n in self.cast]
        return names or self.cast.names

    def talkativeness(self) -> dict[str, float]:
        return {n: c.talkativeness for n, c in self.cast.characters.items()}

    def end(self, channel_id: int) -> None:
        """Stop the channel's scene: the turns it has left are not taken (/reset, a person spoke)."""
        self._current.pop(channel_id, None)

    # --- a scene -----------------------------------------------------------------------------------
    async def run(self, message: discord.Message, text: str, *, replied_to: str | None = None) -> None:
        channel = message.channel
        scene = object()
        self._current[channel.id] = scene
        try:
            try:
                active = await self.active(channel)
                chosen = await self.bot.engine.chosen_persona(conversation_id(channel.id))  # /persona: the channel's default
            except MemoryStoreError as exc:  # nothing can be generated without the channel's cast and conversation
                self.bot.metrics.errors.labels("memory").inc()
                log.warning("memory unreadable for %s: %s", conversation_id(channel.id), exc)
                await self._notice(message, exc.user_message)
                return
            name = first_speaker(active, text, replied_to=replied_to, default=chosen, talkativeness=self.talkativeness(), rng=self.rng)
            reply = await self._turn(message, self.cast[name], text)
            turns = 1
            while reply is not None and turns < self.max_turns and self._current.get(channel.id) is scene:
                name = next_speaker(active, reply.persona, reply.text, talkativeness=self.talkativeness(), rng=self.rng)
                if name is None:
                    break
                if self.bot.gate.waiting:
                    self.bot.metrics.busy.labels("scene").inc()
                    break
                self.bot.cooldown.touch(message.author.id)
                reply = await self._turn(message, self.cast[name], None, wanted=lambda: self._current.get(channel.id) is scene)
                turns += 1
        finally:
            if self._current.get(channel.id) is scene:
                del self._current[channel.id]

    async def _turn(self, message: discord.Message, character: Character, text: str | None, wanted=None):
        """One character's line: the answer to the person's `text`, or (None) to the transcript's last line.
        The reply, or None when the scene should stop (an error, told to the person when it is their answer)."""
        bot = self.bot
        started = time.perf_counter()
        conversation = conversation_id(message.channel.id)
        how: list[str] = []

        async def deliver(reply) -> None:
            _, via = await self.poster.post(message.channel, character, reply.text, reply_to=message if text is not None else None)
            how.append(via)

        try:
            async with message.channel.typing():
                if text is not None:
                    reply = await bot.engine.reply(conversation, text, speaker=message.author.display_name, deliver=deliver,
                                                   deadline=bot.gate.deadline(), persona=character.card)
                else:
                    reply = await bot.engine.follow_up(conversation, character.card, deliver=deliver, deadline=bot.gate.deadline(), wanted=wanted)
        except BusyError as exc:
            bot.metrics.busy.labels("deadline" if isinstance(exc, DeadlineExceeded) else "queue").inc()
            if text is not None:
                await self._notice(message, exc.user_message)
            return None
        except BackendError as exc:
            self._failed(character, "backend", f"generation failed in {conversation}: {exc}")
            if text is not None:
                await self._notice(message, exc.user_message)
            return None
        except (discord.HTTPException, MemoryStoreError) as exc:
            self._failed(character, "discord" if isinstance(exc, discord.HTTPException) else "memory", f"{character.name} could not speak in {conversation}: {exc}")
            if text is not None and isinstance(exc, MemoryStoreError):  # the conversation could not be read: nothing was generated
                await self._notice(message, exc.user_message)
            return None
        except Exception:
            bot.metrics.errors.labels("internal").inc()
            bot.metrics.character_errors.labels(character.name).inc()
            self.stats[character.name]["errors"] += 1
            log.exception("%s's turn failed in %s", character.name, conversation)
            if text is not None:
                await self._notice(message, BackendError.user_message)
            return None
        if reply is None:
            return None
        bot.metrics.replies.labels("message" if text is not None else "scene").inc()
        bot.metrics.character_replies.labels(character.name, how[0] if how else "plain").inc()
        self.stats[character.name]["replies"] += 1
        bot.metrics.tokens.inc(reply.completion_tokens)
        bot.metrics.latency.observe(time.perf_counter() - started)
        return reply

    def _failed(self, character: Character, kind: str, what: str) -> None:
        self.bot.metrics.errors.labels(kind).inc()
        self.bot.metrics.character_errors.labels(character.name).inc()
        self.stats[character.name]["errors"] += 1
        log.warning("%s", what)

    async def _notice(self, message: discord.Message, text: str) -> None:
        try:
            await message.channel.send(text, reference=message.to_reference(fail_if_not_exists=False), allowed_mentions=discord.AllowedMentions.none())
        except discord.HTTPException as exc:
            log.warning("could not send notice: %s", exc)

    # --- health ------------------------------------------------------------------------------------
    def status(self) -> dict:
        return {
            "characters": {name: {**self.stats[name], "talkativeness": c.talkativeness, "avatar": c.avatar_url is not None,
                                  **({"model": c.model} if c.model else {})}
                           for name, c in self.cast.characters.items()},
            "scene_turns": self.max_turns,
            "webhooks_created": self.poster.created,
        }
