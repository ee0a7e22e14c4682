"""One thread that runs a synchronous store's calls for the event loop, in the order they were made.

A thread pool's `run_in_executor` costs a wake-up of the thread per call and a wake-up of the event loop per
result. Under load (a thousand conversations on one Discord bot) that is two thread switches per store call,
each waiting for the GIL. Here the thread takes every call waiting when it wakes, runs them one after the
other, and hands all their results back with one wake-up of the loop: a burst of calls costs one hand-off
each way, and a lone call costs what `run_in_executor` does. `together` wraps each batch (SQLite: one
transaction, so a burst of writes is one commit); when leaving it fails, every call of the batch gets that error,
since nothing the batch did was kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, ContextManager

_STOP = object()


class StoreThread:
    def __init__(self, name: str, together: Callable[[], ContextManager] = contextlib.nullcontext):
        self._together = together
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    async def call(self, fn: Callable[[], Any]) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((loop, future, fn))
        return await future

    def stop(self) -> None:
        """Finish the calls already queued, then end the thread (not waiting for it)."""
        self._jobs.put(_STOP)

    def _run(self) -> None:
        while True:
            batch = [self._jobs.get()]
            while True:
                try:
                    batch.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            stop = _STOP in batch
            jobs = [job for job in batch if job is not _STOP]
            outcomes = []
            try:
                with self._together():
                    for _loop, _future, fn in jobs:
                        try:
                            outcomes.append((fn(), None))
                        except BaseException as exc:  # delivered to the caller, whatever it is
                            outcomes.append((None, exc))
            except BaseException as exc:  # the batch was not kept: nobody's call succeeded
                outcomes = [(None, exc)] * len(jobs)
            done: dict[asyncio.AbstractEventLoop, list] = {}
            for (loop, future, _fn), outcome in zip(jobs, outcomes):
                done.setdefault(loop, []).append((future, outcome))
            for loop, results in done.items():
                try:
                    loop.call_soon_threadsafe(_deliver, results)
                except RuntimeError:  # that loop has closed: nobody is waiting any more
                    pass
            if stop:
                return


def _deliver(results: list) -> None:
    for future, (value, exc) in results:
        if future.cancelled():
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(value)
