"""The bot: a discord.py AutoShardedBot holding the engine, the load limits and the metrics. The cogs in
`cogs/` are thin: they turn Discord events into engine calls."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import discord
import yarl
from discord.ext import commands

from charbot.config import Settings
from charbot.discord import endpoints
from charbot.discord.cast import Cast, load_cast
from charbot.discord.commandsync import sync_if_changed
from charbot.discord.limits import Cooldown
from charbot.discord.metrics import Metrics
from charbot.discord.policy import Rules
from charbot.discord.replying import no_pings
from charbot.discord.scene import Scenes
from charbot.engine import Engine
from charbot.factory import build_engine
from charbot.errors import BackendUnavailable
from charbot.retention import RetentionTask

log = logging.getLogger(__name__)


def cast_from_settings(settings: Settings) -> Cast | None:
    """The cards of `discord_cast_dir` (--cast), or None when no cast is configured."""
    d = settings.discord
    if d.cast_dir is None:
        return None
    return load_cast(d.cast_dir, talkativeness=d.talkativeness, avatar_urls=d.avatar_urls, public_url=d.public_url, models=d.character_models)


def discord_engine(settings: Settings, *, cast: Cast | None = None, **parts) -> Engine:
    """The engine for the bot: its scheduler bounded by the Discord load settings, once, at assembly; the cast's
    characters are its personas (one backend for all of them, but for those naming a model of their own)."""
    cast = cast if cast is not None else cast_from_settings(settings)
    cards = [c.card for c in cast.characters.values()] if cast is not None else ()
    models = {c.name: c.model for c in cast.characters.values() if c.model} if cast is not None else {}
    return build_engine(settings, max_inflight=settings.discord.max_inflight, max_queue=settings.discord.max_queue, cast=cards,
                        character_models=models, **parts)


class CharBot(commands.AutoShardedBot):
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        message_content: bool = True,
        # discord.py waits this long after the last GUILD_CREATE before READY (its default: 2 s). This bot
        # needs no member cache at start, and guilds that arrive later are served all the same.
        guild_ready_timeout: float = 0.5,
        identify_delay: float = 5.0,
        sync_commands: bool = True,
        cast: Cast | None = None,
        scene_rng: random.Random | None = None,
    ):
        d = settings.discord
        intents = discord.Intents.default()
        # Privileged: without it Discord blanks guild message text unless the bot is mentioned.
        intents.message_content = message_content
        super().__init__(
            command_prefix=commands.when_mentioned,
            help_command=None,
            intents=intents,
            allowed_mentions=no_pings(d.ping_author),
            shard_count=d.shard_count,
            shard_ids=d.shard_ids,
            guild_ready_timeout=guild_ready_timeout,
            chunk_guilds_at_startup=False,
            max_messages=1000,
        )
        self.engine = engine
        self.settings = settings
        self.rules = Rules.from_settings(d)
        self.cooldown = Cooldown(d.cooldown_seconds)
        # The engine's scheduler is the one queue in front of the model (bounded by discord_max_inflight and
        # discord_max_queue when the engine was built: see `discord_engine`).
        self.gate = engine.scheduler
        m = settings.memory
        self.retention = RetentionTask(engine.store, retention_days=m.retention_days, max_messages=m.max_messages_per_conversation,
                                       interval=m.prune_interval)
        self.metrics = Metrics()
        cast = cast if cast is not None else cast_from_settings(settings)
        self.scenes = Scenes(self, cast, max_turns=d.scene_turns, rng=scene_rng) if cast is not None else None
        self.metrics.watch_prompt_cache(engine.backend.cache_stats)
        self.metrics.queue_depth.set_function(lambda: self.gate.depth)
        self.metrics.gateway_latency.set_function(lambda: self.latency if math.isfinite(self.latency) else 0.0)
        self.identify_delay = identify_delay
        self.sync_commands = sync_commands
        self.commands_synced: bool | None = None
        self.started_at = time.time()
        self._gateway: yarl.URL | None = None
        self._warming: asyncio.Task | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    async def login(self, token: str) -> None:
        self._gateway = endpoints.apply(self.settings.discord.api_url, self.settings.discord.gateway_url)
        await super().login(token)

    async def setup_hook(self) -> None:
        # The model is loaded and warmed before the gateway connects: the bot never shows online
        # while the first reply would still pay for loading.
        try:
            await self.engine.warm_up()
        except BackendUnavailable as exc:
            # A remote server that is down or still loading: go online anyway, let /healthz say 503 and
            # why, and keep warming up until the first success (users get a short error meanwhile).
            log.warning("backend not ready (%s); retrying in the background", exc)
            self._warming = asyncio.create_task(self._keep_warming())
        self.retention.start()
        from charbot.discord.cogs.admin import AdminCog
        from charbot.discord.cogs.chat import ChatCog

        await self.add_cog(ChatCog(self))
        await self.add_cog(AdminCog(self))
        if self.scenes is not None:
            from charbot.discord.cogs.cast import CastCog

            await self.add_cog(CastCog(self))
        if self.sync_commands:
            self.commands_synced = await sync_if_changed(self.tree, self.application_id, self.command_hash_path())
        log.info("model ready (%s)", "; ".join(b.describe() for b in self.engine.backends))

    async def _keep_warming(self, first_wait: float = 2.0, longest_wait: float = 60.0) -> None:
        wait = first_wait
        while not self.is_closed():
            await asyncio.sleep(wait)
            try:
                await self.engine.warm_up()
            except BackendUnavailable as exc:
                log.info("backend still not ready: %s", exc)
                wait = min(wait * 2, longest_wait)
                continue
            log.warning("backend ready (%s)", "; ".join(b.describe() for b in self.engine.backends))
            return

    def command_hash_path(self) -> Path:
        return self.settings.memory.resolved_db_path().parent / f"discord-commands-{self.application_id}.sha256"

    async def launch_shards(self) -> None:
        if self._gateway is None:
            return await super().launch_shards()
        # A configured gateway wins over the URL /gateway/bot returns (a gateway proxy fronts all shards).
        if self.shard_count is None:
            self.shard_count, _, _ = await self.http.get_bot_gateway()
        self._connection.shard_count = self.shard_count
        shard_ids = self.shard_ids or range(self.shard_count)
        self._connection.shard_ids = shard_ids
        for shard_id in shard_ids:
            await self.launch_shard(self._gateway, shard_id, initial=shard_id == shard_ids[0])

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        # Discord allows one IDENTIFY per 5 s per bucket; discord.py waits that long before re-identifying.
        if not initial and self.identify_delay:
            await asyncio.sleep(self.identify_delay)

    async def close(self) -> None:
        if self._warming is not None:
            self._warming.cancel()
        await self.retention.stop()
        try:
            await super().close()
        finally:
            endpoints.restore()

    async def on_ready(self) -> None:
        from charbot.discord.invite import invite_url

        invite = invite_url(self.application_id, cast=self.scenes is not None)
        log.warning("online as %s in %d servers; invite: %s", self.user, len(self.guilds), invite)

    async def on_message(self, message: discord.Message) -> None:
        pass  # no prefix commands; the chat cog answers messages

    # --- health ----------------------------------------------------------------------------------
    def avatar_image(self, slug: str) -> bytes | None:
        """A cast character's card picture, served on the health page for Discord to fetch as its avatar."""
        character = self.scenes.cast.by_avatar(slug) if self.scenes is not None else None
        return character.image if character is not None else None

    def gateway_connected(self) -> bool:
        return self.is_ready() and not self.is_closed() and bool(self.shards) and all(not s.is_closed() for s in self.shards.values())

    def status(self) -> dict[str, Any]:
        connected = self.gateway_connected()
        backend_ready = all(b.ready for b in self.engine.backends)
        latency = self.latency
        return {
            "ready": connected and backend_ready,
            "gateway_connected": connected,
            "backend_ready": backend_ready,
            "backend_status": "; ".join(b.status for b in self.engine.backends),
            "memory": self.engine.memory_status,
            "memory_store": self.engine.store.location,
            "latency_seconds": round(latency, 4) if math.isfinite(latency) else None,
            "queue_depth": self.gate.depth,
            "inflight": self.gate.inflight,
            "capacity": self.gate.capacity,
            "shards": sorted(self.shards) if self.is_ready() else [],
            "shard_count": self.shard_count,
            # Discord sends direct messages to shard 0 only: the process running it answers them
            "direct_messages": self.shard_ids is None or 0 in self.shard_ids,
            "guilds": len(self.guilds),
            "uptime_seconds": round(time.time() - self.started_at, 1),
            **({"cast": self.scenes.status()} if self.scenes is not None else {}),
        }
