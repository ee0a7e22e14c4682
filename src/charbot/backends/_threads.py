"""Run a blocking generator in a worker thread and consume it from the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from charbot.generation import GenerationSettings

T = TypeVar("T")
_DONE = object()


async def iterate_in_thread(make: Callable[[], Iterator[T]], lock: threading.Lock) -> AsyncIterator[T]:
    """Items of `make()` as they come; the generator runs under `lock` in a thread, never on the loop.

    If the consumer stops early, the producer is told to stop at its next item.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancelled = threading.Event()

    def produce() -> None:
        try:
            with lock:
                for item in make():
                    if cancelled.is_set():
                        break
                    loop.call_soon_threadsafe(queue.put_nowait, item)
        except BaseException as exc:  # handed to the consumer, raised there
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, _DONE)

    worker = loop.run_in_executor(None, produce)
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancelled.set()
        await asyncio.shield(worker)


@dataclass(eq=False)
class WorkerRequest:
    """One generation handed to a batching worker thread: prompt tokens in, pieces and a Completion out."""

    tokens: list[int]
    settings: GenerationSettings
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, item) -> None:
        """Called from the worker thread: hands `item` to the waiting coroutine."""
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


async def worker_results(queue: asyncio.Queue, cancelled: threading.Event) -> AsyncIterator:
    """Text pieces, then the Completion, that a batching worker thread puts on `queue` for one request.

    A worker's exception is raised here; a consumer that stops early sets `cancelled`, so the worker frees the
    request's slot at its next step.
    """
    from charbot.backends.base import Completion

    try:
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, Completion):
                return
    finally:
        cancelled.set()
