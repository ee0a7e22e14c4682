"""Load limits: a per-user cooldown and a bounded number of generations running and waiting."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from charbot.errors import BusyError


class Cooldown:
    """At most one answered message per user every `seconds`."""

    def __init__(self, seconds: float, clock=time.monotonic):
        self.seconds = seconds
        self._clock = clock
        self._last: dict[int, float] = {}

    def retry_after(self, user_id: int) -> float:
        """0 when the user may be answered now (and records that), else seconds left."""
        now = self._clock()
        last = self._last.get(user_id)
        if last is not None and now - last < self.seconds:
            return self.seconds - (now - last)
        self._last[user_id] = now
        if len(self._last) > 10_000:  # forget users whose cooldown is long over
            self._last = {u: t for u, t in self._last.items() if now - t < self.seconds}
        return 0.0


class Gate:
    """`max_inflight` generations at once, `max_queue` more waiting; beyond that, BusyError at once."""

    def __init__(self, max_inflight: int, max_queue: int):
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self._slots = asyncio.Semaphore(max_inflight)
        self.inflight = 0
        self.waiting = 0

    @property
    def depth(self) -> int:
        return self.inflight + self.waiting

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.inflight >= self.max_inflight and self.waiting >= self.max_queue:
            raise BusyError(f"{self.inflight} replies running and {self.waiting} waiting", "raise discord_max_queue")
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1
            self._slots.release()
