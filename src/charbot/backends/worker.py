"""A model in this process, owned by one worker thread.

The event loop never touches the model: `generate` queues a request and awaits what the thread hands back
(text pieces, then one Completion). The prompt is rendered and tokenized on the worker thread too, so a long
prompt never stalls the event loop, and a burst of requests reaches the worker at once. Each local backend
fills the hooks of `ModelWorker` — `admit` (move `waiting` requests into work), `step` (advance the work: one
decode step, or one whole batch), `running` and `drop_running` — and gets queueing, cancellation, shutdown and
error delivery from here. `WorkerBackend` builds `complete` and `stream` from that one generator.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from charbot.backends.base import Backend, Completion, Prompt
from charbot.chat_template import ChatTemplate
from charbot.errors import BackendError
from charbot.generation import GenerationSettings
from charbot.rendering import prompt_text

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Request:
    """One generation handed to the worker thread: a prompt in (`encode` gives its tokens, on the worker
    thread), pieces and a Completion out."""

    encode: Callable[[], list[int]]
    settings: GenerationSettings
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    key: str | None = None  # the conversation it belongs to: a hint for prompt caches
    cancelled: threading.Event = field(default_factory=threading.Event)
    tokens: list[int] = field(default_factory=list)

    def emit(self, item: str | Completion | BaseException) -> None:
        """Called from the worker thread: hands `item` to the waiting coroutine."""
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class ModelWorker(abc.ABC):
    def __init__(self, name: str):
        self.name = name
        self.inbox: deque[Request] = deque()  # submitted by the event loop, guarded by `cond`
        self.chores: deque[Callable[[], None]] = deque()  # run on the worker thread between steps
        self.waiting: deque[Request] = deque()  # tokenized, not yet admitted: the worker thread's own
        self.cond = threading.Condition()
        self.closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # --- the hooks a backend fills (called on the worker thread) -------------------------------------
    @abc.abstractmethod
    def running(self) -> int:
        """Requests being generated now."""

    @abc.abstractmethod
    def admit(self) -> None:
        """Move requests from `waiting` into work."""

    @abc.abstractmethod
    def step(self) -> None:
        """Advance the admitted requests; emit pieces and finish those that are done."""

    @abc.abstractmethod
    def drop_running(self, error: BaseException) -> None:
        """Release every running request, handing each `error`."""

    def free(self) -> None:
        """Release the model; called on the worker thread after the last step."""

    # --- the event loop's side -----------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def active(self) -> int:
        """Requests submitted and not finished (read from any thread: a snapshot)."""
        return len(self.inbox) + len(self.waiting) + self.running()

    def later(self, chore: Callable[[], None]) -> None:
        """Run `chore` on the worker thread before its next step (the model is the thread's alone)."""
        with self.cond:
            self.chores.append(chore)
            self.cond.notify()

    async def generate(self, encode: Callable[[], list[int]], settings: GenerationSettings, key: str | None = None
                       ) -> AsyncIterator[str | Completion]:
        """Pieces of text as they are generated, then the Completion. A consumer that stops early cancels the
        request: the worker frees its place at its next step."""
        req = Request(encode, settings, asyncio.get_running_loop(), asyncio.Queue(), key)
        with self.cond:
            if self.closed:
                raise BackendError(f"the {self.name} model is closed")
            self.inbox.append(req)
            self.cond.notify()
        try:
            while True:
                item = await req.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Completion):
                    return
        finally:
            req.cancelled.set()

    def close(self, timeout: float = 60.0) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # --- the worker thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while self._next():
                pending = list(self.waiting)
                try:
                    self.admit()
                except Exception as exc:  # a hook's own slip: the requests it took fail, never silently; the worker goes on
                    log.exception("%s admission failed", self.name)
                    error = BackendError(f"{self.name} generation failed: {exc}")
                    still = {id(req) for req in self.waiting}
                    for req in pending:
                        if id(req) not in still:
                            req.emit(error)  # one admitted before the slip stops at its next step (cancelled)
                try:
                    self.step()
                except Exception as exc:  # a failed step fails the requests in it, not the worker
                    log.warning("%s step failed: %s", self.name, exc)
                    self.drop_running(BackendError(f"{self.name} generation failed: {exc}"))
        finally:
            self.free()

    def _next(self) -> bool:
        """Wait for work, tokenize what arrived, admit. False once closed."""
        with self.cond:
            while not self.closed and not self.inbox and not self.chores and not self.waiting and not self.running():
                self.cond.wait()
            arrived, chores = list(self.inbox), list(self.chores)
            self.inbox.clear()
            self.chores.clear()
            closed = self.closed
        if closed:
            error = BackendError(f"the {self.name} model was closed")
            self.drop_running(error)
            for req in (*self.waiting, *arrived):
                req.emit(error)
            return False
        for chore in chores:
            chore()
        for req in arrived:
            try:
                req.tokens = req.encode()
            except Exception as exc:  # a prompt the template refuses fails that request alone
                req.emit(exc)
                continue
            self.waiting.append(req)
        return True


class WorkerBackend(Backend):
    """A backend whose model lives in a ModelWorker: `open_model` loads it, `prompt_tokens` renders and
    tokenizes a prompt, the worker generates."""

    worker: ModelWorker | None = None
    template: ChatTemplate | None = None  # the model's chat template, known once it is loaded

    def render(self, prompt: Prompt) -> str | None:
        return prompt_text(prompt, self.template)

    @abc.abstractmethod
    def open_model(self) -> ModelWorker:
        """Load the weights (called off the event loop) and return the worker that will own them."""

    @abc.abstractmethod
    def prompt_tokens(self, prompt: Prompt) -> list[int]: ...

    async def load(self) -> None:
        if self.worker is None:
            self.worker = await asyncio.to_thread(self.open_model)
            self.worker.start()
        self.ready = True

    async def _generate(self, prompt: Prompt, settings: GenerationSettings) -> AsyncIterator[str | Completion]:
        if self.worker is None:
            raise BackendError(f"the {self.name} model is not loaded yet", "call load() first")
        async for item in self.worker.generate(lambda: self.prompt_tokens(prompt), settings, prompt.cache_key):
            yield item

    async def complete(self, prompt: Prompt, settings: GenerationSettings) -> Completion:
        async for item in self._generate(prompt, settings):
            if isinstance(item, Completion):
                return item
        raise BackendError(f"the {self.name} model ended without a completion")

    async def stream(self, prompt: Prompt, settings: GenerationSettings) -> AsyncIterator[str]:
        async for item in self._generate(prompt, settings):
            if isinstance(item, str):
                yield item

    @property
    def active(self) -> int:
        """Requests waiting for or in generation (0 when idle)."""
        return self.worker.active if self.worker is not None else 0

    async def aclose(self) -> None:
        worker, self.worker = self.worker, None
        if worker is not None:
            await asyncio.to_thread(worker.close)
        self.ready = False
