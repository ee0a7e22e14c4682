"""The generation scheduler: between the transports and the backend.

Requests from many conversations run at once up to a capacity fixed when the engine is assembled (the backend's
`parallel`, or less if the transport asks for less); the rest wait in a bounded FIFO. Turns of one conversation never overtake each other: a
waiting request whose conversation is still being answered (generating, or delivering its reply) is skipped
until that one is done, while other conversations go ahead. A request still waiting at its deadline is dropped
with a message for the user.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from charbot.errors import BusyError



class QueueFull(BusyError):
    """Every slot is busy and the waiting line is full: turned away at once."""


class DeadlineExceeded(BusyError):
    """Waited for the model past the request's deadline: dropped before generating."""

    user_message = "Sorry, too many conversations at once and yours waited too long. Please send it again."


@dataclass(eq=False)
class _Waiter:
    key: str | None
    future: asyncio.Future
    since: float = field(default_factory=time.monotonic)


class Held:
    """A slot being used: `generated()` hands the generation capacity on (the reply is being delivered) while
    the conversation's later turns still wait."""

    def __init__(self, scheduler: Scheduler, key: str | None):
        self._scheduler = scheduler
        self._key = key
        self._generating = True

    def generated(self) -> None:
        if self._generating:
            self._generating = False
            self._scheduler._free_capacity()

    def _release(self) -> None:
        self.generated()
        self._scheduler._free_key(self._key)


class Scheduler:
    """`capacity` generations at once, `max_queue` waiting (None: no limit), each for at most `timeout` seconds
    (None: no limit). Fixed once built."""

    def __init__(self, capacity: int = 1, max_queue: int | None = None, timeout: float | None = None, clock=time.monotonic):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._max_queue = max_queue
        self._timeout = timeout
        self._clock = clock
        self._waiting: deque[_Waiter] = deque()
        self._waiting_keys: dict[str | None, int] = {}  # how many waiters each conversation has in the line
        self._running_keys: dict[str | None, int] = {}
        self.inflight = 0
        self.served = 0
        self.rejected = 0
        self.expired = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def max_queue(self) -> int | None:
        return self._max_queue

    @property
    def timeout(self) -> float | None:
        return self._timeout

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def depth(self) -> int:
        return self.inflight + len(self._waiting)

    def deadline(self) -> float | None:
        """The deadline of a request arriving now."""
        return None if self.timeout is None else self._clock() + self.timeout

    # --- admission -----------------------------------------------------------------------------------
    def _can_start(self, key: str | None) -> bool:
        return self.inflight < self.capacity and (key is None or key not in self._running_keys)

    def _start(self, key: str | None) -> None:
        self.inflight += 1
        if key is not None:
            self._running_keys[key] = self._running_keys.get(key, 0) + 1

    def _free_capacity(self) -> None:
        self.inflight -= 1
        self.served += 1
        self._dispatch()

    def _free_key(self, key: str | None) -> None:
        if key is not None:
            left = self._running_keys.pop(key) - 1
            if left:
                self._running_keys[key] = left
        self._dispatch()

    def _enqueue(self, waiter: _Waiter) -> None:
        self._waiting.append(waiter)
        self._waiting_keys[waiter.key] = self._waiting_keys.get(waiter.key, 0) + 1

    def _leave(self, waiter: _Waiter) -> None:
        self._waiting.remove(waiter)  # the ones leaving are near the front, where remove() looks first
        left = self._waiting_keys.pop(waiter.key) - 1
        if left:
            self._waiting_keys[waiter.key] = left

    def _dispatch(self) -> None:
        """Start waiters in arrival order, skipping those whose conversation is generating now. Stops at the
        first waiters that fill the capacity: with a thousand waiting, a freed slot costs a few steps, not a
        pass over the line."""
        if not self._waiting or self.inflight >= self.capacity:
            return
        blocked: set[str | None] = set()
        leaving = []
        for waiter in self._waiting:  # not changed inside the loop: set_result only schedules callbacks
            if self.inflight >= self.capacity:
                break
            if waiter.future.done():
                leaving.append(waiter)
                continue
            # an earlier waiter of the same conversation that could not start keeps its turn
            if waiter.key is not None and waiter.key in blocked:
                continue
            if self._can_start(waiter.key):
                leaving.append(waiter)
                self._start(waiter.key)
                waiter.future.set_result(None)
            elif waiter.key is not None:
                blocked.add(waiter.key)
        for waiter in leaving:
            self._leave(waiter)

    @contextlib.asynccontextmanager
    async def slot(self, key: str | None = None, *, deadline: float | None = None) -> AsyncIterator[Held]:
        """Hold one generation slot. `key` (a conversation id) keeps that conversation's requests in order.

        Raises QueueFull at once when the waiting line is full, DeadlineExceeded when `deadline` (a
        `time.monotonic()` instant; default: now + timeout) passes before a slot frees up.
        """
        if deadline is None:
            deadline = self.deadline()
        same_key_waiting = key is not None and key in self._waiting_keys
        if self._can_start(key) and not same_key_waiting:
            self._start(key)
        else:
            if self.max_queue is not None and len(self._waiting) >= self.max_queue:
                self.rejected += 1
                raise QueueFull(
                    f"{self.inflight} generations running and {len(self._waiting)} waiting",
                    "raise max_queue (discord_max_queue) or parallel",
                )
            waiter = _Waiter(key, asyncio.get_running_loop().create_future())
            self._enqueue(waiter)
            try:
                remaining = None if deadline is None else max(0.0, deadline - self._clock())
                await asyncio.wait_for(asyncio.shield(waiter.future), remaining)
            except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
                if waiter.future.done() and not waiter.future.cancelled():
                    # the slot was handed over just as we gave up: give it back
                    self._finish_unused(key)
                else:
                    waiter.future.cancel()
                    with contextlib.suppress(ValueError):
                        self._leave(waiter)
                    self._dispatch()
                if isinstance(exc, asyncio.CancelledError):
                    raise
                self.expired += 1
                raise DeadlineExceeded(
                    f"waited {self._clock() - waiter.since:.1f}s for a generation slot ({self.inflight} running)",
                    "raise queue_timeout or parallel, or lower the load",
                ) from None
        held = Held(self, key)
        try:
            yield held
        finally:
            held._release()

    def _finish_unused(self, key: str | None) -> None:
        self.served -= 1  # it never ran
        self._free_capacity()
        self._free_key(key)
