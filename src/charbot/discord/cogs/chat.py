"""Answering messages: mentions, replies to the bot, DMs and chat channels (see `policy`)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from charbot.discord.policy import MessageFacts, conversation_id, should_answer, strip_mention
from charbot.discord.replying import StreamedReply, send_reply
from charbot.discord.speakers import author_character, called_by_name
from charbot.errors import BackendError, BusyError
from charbot.memory import MemoryStoreError
from charbot.scheduler import DeadlineExceeded

if TYPE_CHECKING:
    from charbot.discord.bot import CharBot

log = logging.getLogger(__name__)
COOLDOWN_NOTE = "One at a time, please: try again in {seconds:.0f}s."


def replied_character(message: discord.Message, me: discord.abc.User, app_id: int | None, names: Sequence[str]) -> str | None:
    """The character of the cast whose line `message` replies to, if it does."""
    ref = message.reference.resolved if message.reference is not None else None
    if not names or not isinstance(ref, discord.Message):
        return None
    return author_character(names=names, author_name=ref.author.name, content=ref.content, webhook_id=ref.webhook_id,
                            application_id=ref.application_id,
                            author_id=ref.author.id, bot_id=app_id if ref.webhook_id is not None else me.id)


def facts_for(message: discord.Message, me: discord.abc.User, *, cast: Sequence[str] = (), app_id: int | None = None) -> MessageFacts:
    channel = message.channel
    ref = message.reference.resolved if message.reference is not None else None
    roles = frozenset(r.id for r in getattr(message.author, "roles", ()))
    return MessageFacts(
        author_id=message.author.id,
        channel_id=channel.id,
        guild_id=message.guild.id if message.guild else None,
        parent_channel_id=getattr(channel, "parent_id", None),
        role_ids=roles,
        author_is_bot=message.author.bot,
        is_self=message.author.id == me.id,
        mentions_bot=any(u.id == me.id for u in message.mentions),
        replies_to_bot=isinstance(ref, discord.Message) and ref.author.id == me.id,
        calls_character=bool(cast) and called_by_name(strip_mention(message.content, me.id), cast) is not None,
        replies_to_cast=replied_character(message, me, app_id, cast) is not None,
    )


def prompt_text(message: discord.Message, me: discord.abc.User) -> str:
    """The message as the model sees it: without the bot's mention, other mentions as @names."""
    text = strip_mention(message.content, me.id)
    for user in message.mentions:
        text = re.sub(rf"<@!?{user.id}>", "@" + user.display_name, text)
    return text


class ChatCog(commands.Cog):
    def __init__(self, bot: "CharBot"):
        self.bot = bot

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        bot = self.bot
        bot.metrics.messages_seen.inc()
        if bot.user is None:
            return
        cast = bot.scenes.cast.names if bot.scenes is not None else ()
        decision = should_answer(facts_for(message, bot.user, cast=cast, app_id=bot.application_id), bot.rules)
        if not decision:
            bot.metrics.ignored.labels(decision.reason).inc()
            return
        text = prompt_text(message, bot.user)
        if not text:
            # A bare mention, or text Discord withheld because the message content intent is off.
            bot.metrics.ignored.labels("no text").inc()
            return
        wait = bot.cooldown.retry_after(message.author.id)
        if wait:
            bot.metrics.busy.labels("cooldown").inc()
            await self._say(message, COOLDOWN_NOTE.format(seconds=max(1, wait)))
            return
        if bot.scenes is not None:
            await bot.scenes.run(message, text, replied_to=replied_character(message, bot.user, bot.application_id, cast))
            return
        await self.answer(message, text)

    async def answer(self, message: discord.Message, text: str) -> None:
        bot = self.bot
        started = time.perf_counter()
        deadline = bot.gate.deadline()  # counted from arrival, typing indicator included
        conversation = conversation_id(message.channel.id)
        ping = bot.settings.discord.ping_author
        streamed = StreamedReply(message, ping_author=ping) if bot.settings.discord.stream else None

        async def deliver(reply) -> None:
            # The engine remembers the exchange only once this returns: a reply Discord refused is forgotten.
            if streamed is not None:
                await streamed.finish(reply.text)
            else:
                await send_reply(message, reply.text, ping_author=ping)

        try:
            # The engine's scheduler queues it (bounded, with a deadline) and keeps this channel's turns in order.
            async with message.channel.typing():
                reply = await bot.engine.reply(
                    conversation, text, speaker=message.author.display_name,
                    on_update=streamed.update if streamed else None, deliver=deliver, deadline=deadline,
                )
        except BusyError as exc:
            bot.metrics.busy.labels("deadline" if isinstance(exc, DeadlineExceeded) else "queue").inc()
            log.info("busy: %s", exc)
            await self._say(message, exc.user_message)
            return
        except BackendError as exc:
            bot.metrics.errors.labels("backend").inc()
            log.warning("generation failed in %s: %s", conversation, exc)
            await self._say(message, exc.user_message)
            return
        except MemoryStoreError as exc:  # the conversation could not be read: nothing was generated
            bot.metrics.errors.labels("memory").inc()
            log.warning("memory unreadable for %s: %s", conversation, exc)
            await self._say(message, exc.user_message)
            return
        except discord.HTTPException as exc:
            bot.metrics.errors.labels("discord").inc()
            log.warning("could not reply in %s: %s", conversation, exc)
            return
        except Exception:
            bot.metrics.errors.labels("internal").inc()
            log.exception("reply failed in %s", conversation)
            await self._say(message, BackendError.user_message)
            return
        bot.metrics.replies.labels("message").inc()
        bot.metrics.tokens.inc(reply.completion_tokens)
        bot.metrics.latency.observe(time.perf_counter() - started)

    async def _say(self, message: discord.Message, text: str) -> None:
        """A short notice (busy, error); failures here are logged, never raised: the bot stays up."""
        try:
            await send_reply(message, text, ping_author=False)
        except discord.HTTPException as exc:
            log.warning("could not send notice: %s", exc)
