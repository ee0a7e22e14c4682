"""Point discord.py at another REST base and gateway (REST proxies such as nirn-proxy, gateway proxies,
or a test server).

discord.py reads both from class attributes — `Route.BASE` for every REST call (interaction webhooks
included) and `DiscordWebSocket.DEFAULT_GATEWAY` for fresh connections — so the override is
process-wide: one bot per process, which is how the CLI runs it. `restore()` puts the defaults back.
"""

from __future__ import annotations

import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route

from charbot.errors import ConfigError

_DEFAULTS = (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)


def _check(url: str, schemes: tuple[str, ...], setting: str) -> yarl.URL:
    parsed = yarl.URL(url)
    if parsed.scheme not in schemes or not parsed.host:
        raise ConfigError(
            f"invalid setting '{setting}' (CHARBOT_{setting.upper()}): {url!r} is not a {'/'.join(schemes)} URL",
            f"use e.g. {schemes[0]}://host:port{'/api/v10' if 'http' in schemes else '/'}",
        )
    return parsed


def apply(api_url: str | None, gateway_url: str | None) -> yarl.URL | None:
    """Install the overrides; returns the gateway URL to connect to (None: Discord's own)."""
    gateway = _check(gateway_url, ("ws", "wss"), "discord_gateway_url") if gateway_url else None
    if api_url:
        _check(api_url, ("http", "https"), "discord_api_url")
        Route.BASE = api_url.rstrip("/")
    if gateway is not None:
        DiscordWebSocket.DEFAULT_GATEWAY = gateway
    return gateway


def restore() -> None:
    Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = _DEFAULTS
