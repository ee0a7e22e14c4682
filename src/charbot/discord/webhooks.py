"""Posting as a character: through the channel's webhook under the character's name and avatar, or, where
there can be no webhook (a DM, no Manage Webhooks, the channel's 15 webhooks taken), as the bot itself with
the name in bold before the text.

One webhook per channel, named for the bot: found again after a restart by listing the channel's webhooks
(the one this bot's user made), created only when there is none, then reused. When someone deletes it
(10015 Unknown Webhook) it is made again and the message resent from the part that failed. discord.py's
webhook client waits out 429s itself."""

from __future__ import annotations

import logging
import time

import discord

from charbot.discord.cast import Character
from charbot.discord.replying import no_pings
from charbot.discord.split import DISCORD_LIMIT, split_message

log = logging.getLogger(__name__)
MAX_WEBHOOKS = 30007
UNKNOWN_WEBHOOK = 10015
FULL_RETRY_SECONDS = 600.0  # a channel whose webhooks were all taken is asked again after this long
USERNAME_LIMIT = 80


def bold_named(name: str, text: str) -> str:
    return f"**{name}**: {text}"


class CastPoster:
    def __init__(self, client: discord.Client, *, ping_author: bool = False, clock=time.monotonic):
        self.client = client
        self.ping_author = ping_author
        self._hooks: dict[int, discord.Webhook] = {}
        self._full: dict[int, float] = {}  # channel id -> when to try creating a webhook there again
        self._clock = clock
        self.created = 0  # webhooks this process made (for the health page and tests)

    def forget(self, channel_id: int) -> None:
        self._hooks.pop(channel_id, None)

    # --- finding the channel's webhook -------------------------------------------------------------
    @staticmethod
    def _base(channel) -> tuple[object | None, discord.Thread | None]:
        """The channel whose webhook posts here, and the thread to post in (webhooks belong to the parent)."""
        if isinstance(channel, discord.Thread):
            return channel.parent, channel
        return channel, None

    def can_use_webhooks(self, channel) -> bool:
        base, _ = self._base(channel)
        guild = getattr(base, "guild", None)
        if guild is None or guild.me is None or not hasattr(base, "create_webhook"):
            return False  # a DM, or a channel kind without webhooks
        return base.permissions_for(guild.me).manage_webhooks

    async def _webhook(self, base) -> discord.Webhook | None:
        hook = self._hooks.get(base.id)
        if hook is not None:
            return hook
        if self._full.get(base.id, 0) > self._clock():
            return None
        me = self.client.user
        mine = [h for h in await base.webhooks() if h.user is not None and h.user.id == me.id and h.token]
        if mine:
            hook = next((h for h in mine if h.name == me.name), mine[0])
        else:
            try:
                hook = await base.create_webhook(name=me.name, reason="charbot: the cast speaks through it")
            except discord.HTTPException as exc:
                if exc.code != MAX_WEBHOOKS:
                    raise
                log.warning("#%s has 15 webhooks already: the cast speaks there as the bot until one is freed", base)
                self._full[base.id] = self._clock() + FULL_RETRY_SECONDS
                return None
            self.created += 1
        self._hooks[base.id] = hook
        return hook

    # --- posting -----------------------------------------------------------------------------------
    async def post(self, channel, character: Character, text: str, *, reply_to: discord.Message | None = None) -> tuple[list[discord.Message], str]:
        """Put `text` in `channel` as `character`; the messages and how ("webhook" or "plain")."""
        if self.can_use_webhooks(channel):
            try:
                sent = await self._through_webhook(channel, character, text)
            except discord.Forbidden as exc:  # the permission went away and no CHANNEL_UPDATE told us yet
                log.info("no webhook in %s (%s): posting as the bot", channel, exc.text)
                self.forget(self._base(channel)[0].id)
            except discord.HTTPException as exc:
                if exc.status >= 500 or exc.code == UNKNOWN_WEBHOOK:
                    raise
                # e.g. a name Discord refuses as a webhook username ("discord", "clyde"): this message goes plain
                log.warning("webhook refused %s's message in %s (%s %s): posting as the bot", character.name, channel, exc.code, exc.text)
            else:
                if sent is not None:
                    return sent, "webhook"
        return await self._plain(channel, character, text, reply_to), "plain"

    async def _through_webhook(self, channel, character: Character, text: str) -> list[discord.Message] | None:
        base, thread = self._base(channel)
        chunks = split_message(text) or ["..."]
        extra = {"thread": thread} if thread is not None else {}
        if character.avatar_url:
            extra["avatar_url"] = character.avatar_url
        sent: list[discord.Message] = []
        for attempt in range(2):
            hook = await self._webhook(base)
            if hook is None:
                return None
            try:
                for chunk in chunks[len(sent):]:
                    sent.append(await hook.send(chunk, username=character.name[:USERNAME_LIMIT], allowed_mentions=no_pings(False),
                                                wait=True, **extra))
                return sent
            except discord.NotFound as exc:
                if exc.code != UNKNOWN_WEBHOOK or attempt:
                    raise
                log.warning("the webhook of #%s was deleted: making it again", base)
                self.forget(base.id)
        return None

    async def _plain(self, channel, character: Character, text: str, reply_to: discord.Message | None) -> list[discord.Message]:
        ping = self.ping_author and reply_to is not None
        chunks = split_message(bold_named(character.name, text), DISCORD_LIMIT) or [bold_named(character.name, "...")]
        first = {"reference": reply_to.to_reference(fail_if_not_exists=False), "mention_author": ping} if reply_to is not None else {}
        sent = [await channel.send(chunks[0], allowed_mentions=no_pings(ping), **first)]
        for chunk in chunks[1:]:
            sent.append(await channel.send(chunk, allowed_mentions=no_pings(ping)))
        return sent
