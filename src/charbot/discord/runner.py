"""Run the bot with its health server until stopped; Discord's refusals become one-line CharbotErrors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import aiohttp
import discord

from charbot.config import Settings, required_secret
from charbot.discord.bot import CharBot
from charbot.discord.health import HealthServer
from charbot.errors import CharbotError, ConfigError

log = logging.getLogger(__name__)

PORTAL = "https://discord.com/developers/applications"


def bot_token(settings: Settings) -> str:
    env = settings.discord.token_env
    return required_secret(
        env, f"no Discord bot token: the environment variable {env} is not set",
        f"copy the token from {PORTAL} → your application → Bot → Reset Token and export {env}=…",
    )


async def serve(bot: CharBot, token: str, *, health: bool = True, on_health_port=None) -> None:
    """Start the health server (it answers 503 while the model loads), then the bot, until closed."""
    h = bot.settings.health
    server = HealthServer(bot.status, bot.metrics, host=h.host, port=h.port, avatars=bot.avatar_image) if health else None
    loop = asyncio.get_running_loop()
    try:
        await bot.engine.store.open()  # a wrong memory_url fails now, before the model loads
        if server is not None:
            port = await server.start()
            log.warning("health page on http://%s:%d/ (/healthz, /metrics)", h.host, port)
            if on_health_port is not None:
                on_health_port(port)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(bot.close()))
        async with bot:
            await bot.start(token)
    except discord.PrivilegedIntentsRequired:
        raise CharbotError(
            "Discord refused the Message Content intent (gateway close 4014)",
            f"enable it at {PORTAL} → your application → Bot → Privileged Gateway Intents → Message Content Intent, "
            "then start again (or run with --no-message-content to answer mentions and DMs only)",
        ) from None
    except discord.LoginFailure:
        raise ConfigError(
            f"Discord rejected the bot token in {bot.settings.discord.token_env}",
            f"copy a fresh one from {PORTAL} → your application → Bot → Reset Token",
        ) from None
    except (discord.GatewayNotFound, aiohttp.ClientConnectionError, discord.ConnectionClosed, OSError) as exc:
        where = bot.settings.discord.api_url or "discord.com"
        raise CharbotError(
            f"cannot stay connected to Discord ({where}): {type(exc).__name__}: {exc}",
            "check the network, or CHARBOT_DISCORD_API_URL / CHARBOT_DISCORD_GATEWAY_URL when using a proxy",
        ) from None
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)
        if server is not None:
            await server.stop()
        await bot.engine.aclose()
        await bot.engine.store.close()
