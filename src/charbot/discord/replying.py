"""Putting a reply on Discord: as a reply to the user's message, split under the length limit, optionally
streamed by editing one message at most once a second (Discord's edit rate limit is per channel)."""

from __future__ import annotations

import asyncio
import time

import discord

from charbot.discord.split import split_message

EDIT_INTERVAL = 1.0
CURSOR = " ▌"


def no_pings(ping_author: bool = False) -> discord.AllowedMentions:
    """Model output can never ping @everyone, @here, roles or users; optionally the replied-to author."""
    return discord.AllowedMentions(everyone=False, users=False, roles=False, replied_user=ping_author)


async def send_reply(message: discord.Message, text: str, *, ping_author: bool = False) -> list[discord.Message]:
    """The first chunk replies to `message`; the rest follow in the same channel."""
    allowed = no_pings(ping_author)
    chunks = split_message(text) or ["..."]
    sent = [
        await message.channel.send(
            chunks[0], reference=message.to_reference(fail_if_not_exists=False), mention_author=ping_author, allowed_mentions=allowed
        )
    ]
    for chunk in chunks[1:]:
        sent.append(await message.channel.send(chunk, allowed_mentions=allowed))
    return sent


class StreamedReply:
    """Feeds `Engine.reply(on_update=...)`: the first piece is sent, later ones edit it, throttled."""

    def __init__(self, message: discord.Message, *, ping_author: bool = False, interval: float = EDIT_INTERVAL):
        self.message = message
        self.ping_author = ping_author
        self.interval = interval
        self.sent: discord.Message | None = None
        self.shown = ""
        self.edits = 0
        self._last = 0.0

    async def update(self, text: str) -> None:
        head = (split_message(text) or [""])[0]
        if not head:
            return
        if self.sent is None:
            self.sent = (await send_reply(self.message, head[: 2000 - len(CURSOR)] + CURSOR, ping_author=self.ping_author))[0]
            self.shown, self._last = head, time.monotonic()
        elif head != self.shown and time.monotonic() - self._last >= self.interval:
            await self.sent.edit(content=head[: 2000 - len(CURSOR)] + CURSOR, allowed_mentions=no_pings(self.ping_author))
            self.shown, self._last = head, time.monotonic()
            self.edits += 1

    async def finish(self, text: str) -> None:
        """Put the final text in place (it may differ from what streamed: a retry or the fallback)."""
        if self.sent is None:
            await send_reply(self.message, text, ping_author=self.ping_author)
            return
        chunks = split_message(text) or ["..."]
        wait = self.interval - (time.monotonic() - self._last)
        if wait > 0:
            await asyncio.sleep(wait)
        await self.sent.edit(content=chunks[0], allowed_mentions=no_pings(self.ping_author))
        self.edits += 1
        for chunk in chunks[1:]:
            await self.message.channel.send(chunk, allowed_mentions=no_pings(self.ping_author))
