"""Slash commands: /reset, /persona, /ask."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from charbot.discord.policy import MessageFacts, conversation_id, permitted
from charbot.discord.replying import no_pings
from charbot.discord.split import split_message
from charbot.cards import MAX_FILE_BYTES, parse_card_bytes
from charbot.errors import BackendError, BusyError, PersonaError
from charbot.memory import MemoryStoreError, MemoryUnavailable
from charbot.persona import CharacterCard

if TYPE_CHECKING:
    from charbot.discord.bot import CharBot

log = logging.getLogger(__name__)
REFUSED = "You can't use me here."
MEMORY_DOWN = "My memory can't be changed right now (the server's storage is failing); please tell the bot's operator."
MEMORY_UNREADABLE = "My memory isn't reachable right now; please try again in a moment."


def interaction_facts(interaction: discord.Interaction) -> MessageFacts:
    user = interaction.user
    return MessageFacts(
        author_id=user.id,
        channel_id=interaction.channel_id or 0,
        guild_id=interaction.guild_id,
        parent_channel_id=getattr(interaction.channel, "parent_id", None),
        role_ids=frozenset(r.id for r in getattr(user, "roles", ())),
        author_is_bot=user.bot,
    )


async def tell_memory_failed(bot: "CharBot", interaction: discord.Interaction, exc: Exception) -> None:
    """A slash command whose memory call failed: shown on /healthz and in the metrics, logged, and the member
    told in one short line (unreachable: try again; failing storage: tell the operator)."""
    bot.engine.memory_status = f"error: {exc}"
    bot.metrics.errors.labels("memory").inc()
    log.error("/%s failed: %s", interaction.command.qualified_name if interaction.command else "command", exc)
    await interaction.response.send_message(MEMORY_UNREADABLE if isinstance(exc, MemoryUnavailable) else MEMORY_DOWN, ephemeral=True)


class AdminCog(commands.Cog):
    def __init__(self, bot: "CharBot"):
        self.bot = bot

    @property
    def engine(self):
        return self.bot.engine

    async def _refused(self, interaction: discord.Interaction) -> bool:
        """Slash commands obey the same allow/block lists (and the DM switch) as messages."""
        decision = permitted(interaction_facts(interaction), self.bot.rules)
        if decision:
            return False
        self.bot.metrics.ignored.labels(decision.reason).inc()
        await interaction.response.send_message(REFUSED, ephemeral=True)
        return True

    @app_commands.command(name="reset", description="Forget this channel's conversation.")
    async def reset(self, interaction: discord.Interaction) -> None:
        if await self._refused(interaction):
            return
        # In a server the conversation is the whole channel's: wiping it is for moderators.
        if interaction.guild is not None and not interaction.permissions.manage_messages:
            await interaction.response.send_message("Only members with Manage Messages can reset this channel.", ephemeral=True)
            return
        try:
            forgotten = await self.engine.reset(conversation_id(interaction.channel_id))
        except MemoryStoreError as exc:
            await tell_memory_failed(self.bot, interaction, exc)
            return
        if self.bot.scenes is not None:
            self.bot.scenes.end(interaction.channel_id)  # the scene's remaining turns are not taken
        self.bot.metrics.replies.labels("reset").inc()
        await interaction.response.send_message(f"Forgot {forgotten} messages. Fresh start.")

    @app_commands.command(name="persona", description="Show the characters, or switch this channel's character.")
    @app_commands.describe(name="Character to switch to (leave empty to list them)", card="Or a character card to switch to (PNG, CHARX or JSON)")
    async def persona(self, interaction: discord.Interaction, name: str | None = None, card: discord.Attachment | None = None) -> None:
        if await self._refused(interaction):
            return
        conversation = conversation_id(interaction.channel_id)
        try:
            current = (await self.engine.persona_for(conversation)).name
        except MemoryStoreError as exc:
            await tell_memory_failed(self.bot, interaction, exc)
            return
        names = ", ".join(sorted(self.engine.personas))
        if not name and card is None:
            await interaction.response.send_message(f"Talking as **{current}**. Characters: {names}.", ephemeral=True)
            return
        if interaction.guild is not None and not interaction.permissions.manage_guild:
            await interaction.response.send_message("Only members with Manage Server can switch the character.", ephemeral=True)
            return
        target: CharacterCard | str | None = name
        if card is not None:
            try:
                target = await self._uploaded(card)
            except PersonaError as exc:  # a bad card changes nothing: the channel keeps its character
                await interaction.response.send_message(f"That card can't be used: {exc}. Still talking as **{current}**.", ephemeral=True)
                return
        try:
            chosen = await self.engine.set_persona(conversation, target)
        except KeyError:
            await interaction.response.send_message(f"No character called {name!r}. Characters: {names}.", ephemeral=True)
            return
        except MemoryStoreError as exc:
            await tell_memory_failed(self.bot, interaction, exc)
            return
        self.bot.metrics.replies.labels("persona").inc()
        await interaction.response.send_message(f"Now talking as **{chosen.name}** in this channel.")

    async def _uploaded(self, attachment: discord.Attachment) -> CharacterCard:
        """The card in an uploaded file, checked before it can replace anything."""
        if attachment.size > MAX_FILE_BYTES:
            raise PersonaError(f"{attachment.filename}: {attachment.size} bytes is too big for a character card", f"keep it under {MAX_FILE_BYTES} bytes")
        try:
            data = await attachment.read()
        except discord.HTTPException as exc:
            raise PersonaError(f"{attachment.filename}: could not be downloaded ({exc.status})", "upload it again") from None
        card = parse_card_bytes(data, attachment.filename).card
        loaded = self.engine.personas.get(card.name)
        if loaded is not None and loaded.model_dump() != card.model_dump():
            # Cards are shared by every channel: an upload must not replace a character other channels use.
            raise PersonaError(f"{attachment.filename}: a different character called {card.name!r} is already loaded", "rename the card, or pick it by name")
        return card

    @persona.autocomplete("name")
    async def _persona_names(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        wanted = current.casefold()
        return [app_commands.Choice(name=n, value=n) for n in sorted(self.engine.personas) if wanted in n.casefold()][:25]

    @app_commands.command(name="ask", description="Ask the character a one-off question (not remembered).")
    @app_commands.describe(question="What to ask")
    async def ask(self, interaction: discord.Interaction, question: str) -> None:
        if await self._refused(interaction):
            return
        bot = self.bot
        started = time.perf_counter()
        try:
            persona = await self.engine.persona_for(conversation_id(interaction.channel_id))  # this channel's character
        except MemoryStoreError as exc:
            await tell_memory_failed(self.bot, interaction, exc)
            return
        await interaction.response.defer(thinking=True)
        try:
            reply = await self.engine.ask(question, speaker=interaction.user.display_name, persona=persona)
            text = reply.text
        except (BusyError, BackendError) as exc:
            bot.metrics.errors.labels("backend" if isinstance(exc, BackendError) else "busy").inc()
            log.warning("/ask failed: %s", exc)
            text = exc.user_message
            reply = None
        chunks = split_message(text) or ["..."]
        await interaction.edit_original_response(content=chunks[0], allowed_mentions=no_pings())
        for chunk in chunks[1:]:
            await interaction.followup.send(chunk, allowed_mentions=no_pings())
        if reply is not None:
            bot.metrics.replies.labels("ask").inc()
            bot.metrics.tokens.inc(reply.completion_tokens)
            bot.metrics.latency.observe(time.perf_counter() - started)
