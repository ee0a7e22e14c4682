"""`charbot discord`: serve the character on Discord (token from $DISCORD_TOKEN)."""

from __future__ import annotations

import asyncio

import click

from charbot.cli.options import TALK_SETTINGS, settings_options
from charbot.config import Settings


@click.command("discord")
@settings_options(*TALK_SETTINGS, ("health_port",), ("health_host",), ("discord_stream", "--stream/--no-stream"), ("cast_dir", "--cast"),
                  ("discord_scene_turns", "--scene-turns"), ("discord_shard_ids", "--shard-ids"), ("discord_shard_count", "--shard-count"))
@click.option("--no-health", is_flag=True, help="Do not serve the health/metrics page.")
@click.option("--message-content/--no-message-content", default=True, show_default=True,
              help="Request the privileged Message Content intent; without it only mentions and DMs carry text.")
def discord_cmd(settings: Settings, no_health: bool, message_content: bool) -> None:
    """Run the character (or, with --cast DIR, a cast of characters) as a Discord bot."""
    from charbot.discord.bot import CharBot, cast_from_settings, discord_engine
    from charbot.discord.runner import bot_token, serve

    token = bot_token(settings)  # before loading the model: a missing token should fail fast
    cast = cast_from_settings(settings)  # a bad card fails here, before the model loads
    bot = CharBot(discord_engine(settings, cast=cast), settings, message_content=message_content, cast=cast)
    asyncio.run(serve(bot, token, health=not no_health))
