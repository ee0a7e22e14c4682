"""The generation scheduler: capacity, bounded queue, deadlines, and per-conversation order."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from charbot.backends.base import Completion
from charbot.engine import Engine
from charbot.errors import BusyError
from charbot.factory import build_engine
from charbot.scheduler import DeadlineExceeded, QueueFull, Scheduler
from conftest import ScriptedBackend


class CountingBackend(ScriptedBackend):
    """Scripted replies that take `delay` and record how many generations overlap."""

    def __init__(self, *a, parallel: int = 4, **kw):
        super().__init__(*a, **kw)
        self.parallel = parallel
        self.running = 0
        self.peak = 0

    async def complete(self, prompt, settings):
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if self.release is not None:
                await self.release.wait()
            await asyncio.sleep(self.delay if isinstance(self.delay, float) else self.delay())
            text = self._next(prompt)
            return Completion(text, len(text.split()))
        finally:
            self.running -= 1


async def until(condition, turns: int = 1000, seconds: float = 10.0) -> None:
    """Lets the other tasks run until `condition()` holds. The scheduler lives in this loop, so no timer is
    involved; the memory store's calls run on a thread of their own, so a condition behind one of them gets
    real time too: it fails after `turns` rounds of the loop and `seconds`, whichever comes last."""
    deadline = time.monotonic() + seconds
    rounds = 0
    while not condition():
        rounds += 1
        if rounds > turns and time.monotonic() > deadline:
            raise AssertionError(f"still not {condition} after {turns} rounds of the loop and {seconds:g} s")
        await asyncio.sleep(0 if rounds <= turns else 0.001)


def echo_last_user(prompt) -> str:
    last = [m for m in prompt.messages if m.role == "user"][-1].content
    return "You said " + last.split(":", 1)[-1].strip()


async def test_capacity_bounds_concurrency_and_queue_rejects_beyond():
    s = Scheduler(capacity=2, max_queue=1, timeout=None)
    release = asyncio.Event()
    started = []

    async def job(key):
        async with s.slot(key):
            started.append(key)
            await release.wait()

    tasks = [asyncio.create_task(job(k)) for k in ("a", "b", "c")]
    await until(lambda: s.depth == 3)
    assert started == ["a", "b"] and (s.inflight, s.waiting, s.depth) == (2, 1, 3)
    with pytest.raises(QueueFull) as info:
        async with s.slot("d"):
            pass
    assert isinstance(info.value, BusyError) and info.value.user_message == BusyError.user_message
    assert s.rejected == 1
    release.set()
    await asyncio.gather(*tasks)
    assert started == ["a", "b", "c"] and s.depth == 0 and s.served == 3


async def holding(s: Scheduler, key: str) -> tuple[asyncio.Task, asyncio.Event]:
    """A task that holds a slot of `s` for conversation `key` until the returned event is set."""
    release = asyncio.Event()

    async def hold():
        async with s.slot(key):
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    return holder, release


async def test_waiting_past_the_deadline_is_dropped_and_frees_its_place():
    s = Scheduler(capacity=1, max_queue=4, timeout=0.1)
    holder, release = await holding(s, "a")
    with pytest.raises(DeadlineExceeded) as info:
        async with s.slot("b"):
            pytest.fail("must not run")
    assert "waited too long" in info.value.user_message and "waited 0.1" in str(info.value)
    assert s.waiting == 0 and s.expired == 1
    release.set()
    await holder
    async with s.slot("b"):  # the line is clear again
        assert s.inflight == 1


async def test_a_conversation_waits_for_its_own_turn_but_not_for_others():
    s = Scheduler(capacity=3, max_queue=10)
    log: list[str] = []
    gates = {name: asyncio.Event() for name in ("a1", "a2", "b1")}

    async def job(key, name):
        async with s.slot(key):
            log.append("start " + name)
            await gates[name].wait()
            log.append("end " + name)

    a1 = asyncio.create_task(job("a", "a1"))
    await asyncio.sleep(0)
    a2 = asyncio.create_task(job("a", "a2"))
    await asyncio.sleep(0)
    b1 = asyncio.create_task(job("b", "b1"))
    await until(lambda: "start b1" in log)
    assert s.waiting == 1 and log == ["start a1", "start b1"]  # b overtakes a2, which waits for a1 although a slot is free
    gates["b1"].set()
    gates["a1"].set()
    await until(lambda: "start a2" in log)
    assert log.index("start a2") > log.index("end a1")
    gates["a2"].set()
    await asyncio.gather(a1, a2, b1)


async def test_cancelled_waiter_leaves_the_line():
    s = Scheduler(capacity=1, max_queue=4)
    holder, release = await holding(s, "a")
    waiter = asyncio.create_task(s.slot("b").__aenter__())
    await asyncio.sleep(0)
    assert s.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert s.waiting == 0
    release.set()
    await holder
    assert s.depth == 0


def test_capacity_is_fixed_at_assembly_and_never_above_the_backends(isolated_env):
    from charbot.config import load_settings

    settings = load_settings()
    assert build_engine(settings, backend=CountingBackend(parallel=1), max_inflight=8).scheduler.capacity == 1
    assert build_engine(settings, backend=CountingBackend(parallel=6)).scheduler.capacity == 6
    assert build_engine(settings, backend=CountingBackend(parallel=6), max_inflight=2, max_queue=3).scheduler.capacity == 2
    assert not hasattr(Scheduler, "configure")  # nothing re-bounds it after assembly


async def test_delivery_frees_the_model_but_holds_the_conversation(store, sample_card):
    """While a reply is being sent, another channel may generate; the same channel's next turn waits."""
    backend = CountingBackend(respond=echo_last_user, parallel=1, delay=0.0)
    engine = Engine(backend, store, sample_card)
    sending, finish_sending = asyncio.Event(), asyncio.Event()

    async def slow_delivery(reply) -> None:
        sending.set()
        await finish_sending.wait()

    first = asyncio.create_task(engine.reply("a", "opening words", deliver=slow_delivery))
    await sending.wait()
    other = await engine.reply("b", "elsewhere")  # capacity 1, yet not blocked by a's delivery
    assert other.text == "You said elsewhere"
    later = asyncio.create_task(engine.reply("a", "closing words"))

    async def queued() -> None:
        while engine.scheduler.waiting == 0 and not later.done():
            await asyncio.sleep(0)

    await asyncio.wait_for(queued(), 5)
    assert not later.done() and await store.count_messages("a") == 0  # a's second turn waits for its first to be sent
    assert all("closing words" not in m.content for p in backend.prompts for m in p.messages)
    finish_sending.set()
    await first
    await later
    assert [t.content for t in await store.history("a")] == ["opening words", "You said opening words", "closing words", "You said closing words"]


async def test_engine_serves_conversations_concurrently_and_each_in_order(store, sample_card):
    rng = random.Random(7)
    backend = CountingBackend(respond=echo_last_user, parallel=4, delay=lambda: rng.uniform(0.005, 0.03))
    engine = Engine(backend, store, sample_card)
    assert engine.scheduler.capacity == 4
    sent = {f"c{i}": [f"message {i}-{j}" for j in range(5)] for i in range(6)}
    tasks = []
    for j in range(5):  # interleaved arrivals: every conversation's j-th turn before any (j+1)-th
        for conv, texts in sent.items():
            tasks.append(asyncio.create_task(engine.reply(conv, texts[j], speaker="Ines")))
            await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert 1 < backend.peak <= 4
    for conv, texts in sent.items():
        turns = await store.history(conv, 100)
        assert [t.content for t in turns if t.role == "user"] == texts
        assert [t.content for t in turns if t.role == "assistant"] == ["You said " + t for t in texts]


async def test_engine_deadline_reaches_the_caller_as_a_busy_error(store, sample_card):
    backend = CountingBackend(["Aye."], parallel=1)
    backend.release = asyncio.Event()  # the first generation lasts until the second has given up
    engine = Engine(backend, store, sample_card, scheduler=Scheduler(1, max_queue=4, timeout=0.05))
    first = asyncio.create_task(engine.reply("a", "first"))
    await until(lambda: backend.running == 1)
    with pytest.raises(DeadlineExceeded):
        await engine.reply("b", "second")
    backend.release.set()
    assert (await first).text == "Aye."
    assert await store.count_messages("b") == 0  # nothing half-remembered
