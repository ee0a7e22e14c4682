"""/cast list|add|remove: which characters of the cast speak in this channel (kept in the memory store, so a
restart keeps it). Changing it is for members with Manage Channels."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from charbot.discord.cogs.admin import REFUSED, interaction_facts, tell_memory_failed
from charbot.discord.policy import conversation_id, permitted
from charbot.memory import MemoryStoreError

if TYPE_CHECKING:
    from charbot.discord.bot import CharBot


class CastCog(commands.GroupCog, group_name="cast", group_description="The characters who speak in this channel."):
    def __init__(self, bot: "CharBot"):
        self.bot = bot
        self.scenes = bot.scenes
        super().__init__()

    async def _refused(self, interaction: discord.Interaction, *, changes: bool) -> bool:
        decision = permitted(interaction_facts(interaction), self.bot.rules)
        if not decision:
            self.bot.metrics.ignored.labels(decision.reason).inc()
            await interaction.response.send_message(REFUSED, ephemeral=True)
            return True
        if changes and interaction.guild is not None and not interaction.permissions.manage_channels:
            await interaction.response.send_message("Only members with Manage Channels can change the cast here.", ephemeral=True)
            return True
        return False

    def _listing(self, active: list[str]) -> str:
        cast = self.scenes.cast
        benched = [n for n in cast.names if n not in active]
        line = "In this channel: " + ", ".join(f"**{n}** ({cast[n].talkativeness:.0%} talkative)" for n in active) + "."
        return line + (f" Also in the cast: {', '.join(benched)}." if benched else "")

    async def _active(self, interaction: discord.Interaction) -> list[str] | None:
        """The channel's active cast; None when memory cannot be read (the member was told)."""
        try:
            return await self.scenes.active(interaction.channel)
        except MemoryStoreError as exc:
            await tell_memory_failed(self.bot, interaction, exc)
            return None

    async def _change(self, interaction: discord.Interaction, name: str, adding: bool) -> None:
        if await self._refused(interaction, changes=True):
            return
        cast = self.scenes.cast
        character = cast.find(name)
        if character is None:
            await interaction.response.send_message(f"No character called {name!r} in the cast. Characters: {', '.join(cast.names)}.", ephemeral=True)
            return
        active = await self._active(interaction)
        if active is None:
            return
        if adding and character.name in active:
            await interaction.response.send_message(f"**{character.name}** is already here.", ephemeral=True)
            return
        if not adding and character.name not in active:
            await interaction.response.send_message(f"**{character.name}** is not in this channel's cast.", ephemeral=True)
            return
        if not adding and active == [character.name]:
            await interaction.response.send_message("A channel keeps at least one character: add another one first.", ephemeral=True)
            return
        names = [n for n in cast.names if (n in active) != (n == character.name)]  # in the cast's order
        try:
            await self.bot.engine.set_channel_cast(conversation_id(interaction.channel_id), names)
        except MemoryStoreError as exc:
            await tell_memory_failed(self.bot, interaction, exc)
            return
        self.bot.metrics.replies.labels("cast").inc()
        verb = "joins" if adding else "leaves"
        await interaction.response.send_message(f"**{character.name}** {verb} the scene. {self._listing(names)}")

    @app_commands.command(name="list", description="Who speaks in this channel, and who else is in the cast.")
    async def list_(self, interaction: discord.Interaction) -> None:
        if await self._refused(interaction, changes=False):
            return
        active = await self._active(interaction)
        if active is not None:
            await interaction.response.send_message(self._listing(active), ephemeral=True)

    @app_commands.command(name="add", description="Bring a character of the cast into this channel.")
    @app_commands.describe(name="The character")
    async def add(self, interaction: discord.Interaction, name: str) -> None:
        await self._change(interaction, name, adding=True)

    @app_commands.command(name="remove", description="Take a character out of this channel.")
    @app_commands.describe(name="The character")
    async def remove(self, interaction: discord.Interaction, name: str) -> None:
        await self._change(interaction, name, adding=False)

    @add.autocomplete("name")
    @remove.autocomplete("name")
    async def _names(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        wanted = current.casefold()
        return [app_commands.Choice(name=n, value=n) for n in self.scenes.cast.names if wanted in n.casefold()][:25]
