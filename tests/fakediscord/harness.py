"""Run the real `charbot discord` bot (CharBot + serve) in-process against a FakeDiscord."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from charbot.config import load_settings
from charbot.discord.bot import CharBot, discord_engine
from charbot.discord.runner import serve

from .server import FakeDiscord


@contextlib.asynccontextmanager
async def running_bot(fake: FakeDiscord, backend, db_path: Path, *, message_content: bool = True, health: bool = False,
                      wait_ready: bool = True, **overrides) -> AsyncIterator[CharBot]:
    settings = load_settings(**{
        "discord_api_url": fake.api_url, "discord_gateway_url": fake.gateway_url, "db_path": db_path,
        "health_host": "127.0.0.1", "health_port": 0, "discord_cooldown_seconds": 0, **overrides,
    })
    engine = discord_engine(settings, backend=backend)
    bot = CharBot(engine, settings, message_content=message_content, guild_ready_timeout=0.05, identify_delay=0)
    bot.health_port = None

    def got_port(port: int) -> None:
        bot.health_port = port

    task = asyncio.create_task(serve(bot, fake.state.token, health=health, on_health_port=got_port))
    bot.serve_task = task
    try:
        if wait_ready:
            await fake.wait_for(lambda: bot.is_ready() or task.done(), timeout=15)
            if task.done():
                task.result()  # raises what stopped the bot
        yield bot
    finally:
        if not bot.is_closed():
            await bot.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
