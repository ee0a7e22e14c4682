"""Keeping the conversation store bounded while serving: a periodic sweep by age and by count."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from charbot.memory import Store

log = logging.getLogger(__name__)
DAY = 86400.0


@dataclass(frozen=True)
class Swept:
    old_messages: int = 0
    over_cap: int = 0
    idle_conversations: int = 0

    @property
    def total(self) -> int:
        return self.old_messages + self.over_cap + self.idle_conversations


async def sweep(store: Store, *, retention_days: float | None, max_messages: int | None) -> Swept:
    """One retention pass. Without a retention window or cap it deletes nothing. Several processes sharing
    one database may sweep it at once: each deletion is idempotent, so they only repeat each other."""
    old = await store.prune(retention_days * DAY) if retention_days else 0
    capped = await store.cap_messages(max_messages) if max_messages else 0
    idle = await store.drop_idle_conversations(retention_days * DAY) if retention_days else 0
    return Swept(old, capped, idle)


class RetentionTask:
    """Runs `sweep` now and then every `interval` seconds until stopped (the store keeps it off the event loop)."""

    def __init__(self, store: Store, *, retention_days: float | None, max_messages: int | None, interval: float):
        self.store = store
        self.retention_days = retention_days
        self.max_messages = max_messages
        self.interval = interval
        self.sweeps = 0
        self.deleted = 0
        self._task: asyncio.Task | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.retention_days or self.max_messages)

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._run(), name="charbot-retention")

    async def run_once(self) -> Swept:
        swept = await sweep(self.store, retention_days=self.retention_days, max_messages=self.max_messages)
        self.sweeps += 1
        self.deleted += swept.total
        if swept.total:
            log.info("retention sweep: %d old messages, %d over the per-conversation cap, %d idle conversations",
                     swept.old_messages, swept.over_cap, swept.idle_conversations)
        return swept

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # a locked or failing database must not take the bot down; next sweep retries
                log.exception("retention sweep failed")
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
