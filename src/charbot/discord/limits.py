"""Load limits on Discord's side: a per-user cooldown. (The bounded queue in front of the model is the
engine's scheduler.)"""

from __future__ import annotations

import time


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

    def touch(self, user_id: int) -> None:
        """Restart the user's cooldown now (a scene they started took another turn)."""
        self._last[user_id] = self._clock()
