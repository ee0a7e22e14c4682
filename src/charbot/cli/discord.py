"""`charbot discord`: serve the character on Discord (token from $DISCORD_TOKEN)."""

from __future__ import annotations

import asyncio

import click

from charbot.cli.options import model_options
from charbot.config import Settings


@click.command("discord")
@model_options
@click.option("--health-port", type=click.IntRange(0, 65535), default=None, help="Port of the health/metrics page (0: pick a free one). Default 8080.")
@click.option("--health-host", default=None, help="Address of the health/metrics page. Default 0.0.0.0.")
@click.option("--no-health", is_flag=True, help="Do not serve the health/metrics page.")
@click.option("--stream/--no-stream", default=None, help="Stream replies by editing the message (at most once a second).")
@click.option("--message-content/--no-message-content", default=True, show_default=True,
              help="Request the privileged Message Content intent; without it only mentions and DMs carry text.")
def discord_cmd(settings: Settings, health_port: int | None, health_host: str | None, no_health: bool, stream: bool | None, message_content: bool) -> None:
    """Run the character as a Discord bot."""
    from charbot.discord.bot import CharBot
    from charbot.discord.runner import bot_token, serve
    from charbot.factory import build_engine

    overrides = {k: v for k, v in {"health_port": health_port, "health_host": health_host, "discord_stream": stream}.items() if v is not None}
    if overrides:
        settings = settings.model_copy(update=overrides)
    token = bot_token(settings)  # before loading the model: a missing token should fail fast
    engine = build_engine(settings)
    bot = CharBot(engine, settings, message_content=message_content)
    asyncio.run(serve(bot, token, health=not no_health))
