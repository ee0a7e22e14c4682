"""The store's thread: calls run in the order made, each caller gets its own result or exception, and a burst
of calls is answered with one wake-up of the event loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from charbot import store_thread
from charbot.store_thread import StoreThread


async def test_calls_run_in_order_and_each_gets_its_own_outcome():
    thread = StoreThread("test-store")
    ran: list[int] = []

    def job(i: int):
        ran.append(i)
        if i == 3:
            raise ValueError("row 3 is bad")
        return i * 10

    results = await asyncio.gather(*(thread.call(lambda i=i: job(i)) for i in range(8)), return_exceptions=True)
    assert ran == list(range(8))
    assert [r for i, r in enumerate(results) if i != 3] == [0, 10, 20, 40, 50, 60, 70]
    assert isinstance(results[3], ValueError) and str(results[3]) == "row 3 is bad"
    thread.stop()


async def test_a_burst_is_answered_with_one_wake_up(monkeypatch):
    deliveries: list[int] = []
    real = store_thread._deliver
    monkeypatch.setattr(store_thread, "_deliver", lambda results: (deliveries.append(len(results)), real(results)))
    thread = StoreThread("test-store")
    busy, release = threading.Event(), threading.Event()
    first = asyncio.ensure_future(thread.call(lambda: (busy.set(), release.wait(10))))
    assert await asyncio.to_thread(busy.wait, 10)  # the thread is inside the first call
    burst = [asyncio.ensure_future(thread.call(lambda i=i: i)) for i in range(50)]
    await asyncio.sleep(0)  # every call of the burst is queued before the thread wakes
    release.set()
    assert await asyncio.gather(*burst) == list(range(50))
    await first
    assert deliveries == [1, 50]  # the first call alone, then the whole burst in one hand-off
    thread.stop()


async def test_a_cancelled_caller_does_not_break_the_others():
    thread = StoreThread("test-store")
    release = threading.Event()
    slow = asyncio.ensure_future(thread.call(lambda: release.wait(10)))
    gone = asyncio.ensure_future(thread.call(lambda: "nobody reads this"))
    after = asyncio.ensure_future(thread.call(lambda: "read"))
    await asyncio.sleep(0)
    gone.cancel()
    release.set()
    assert await slow is True and await after == "read"
    with pytest.raises(asyncio.CancelledError):
        await gone
    thread.stop()


async def test_a_burst_of_sqlite_writes_is_one_transaction_and_a_failing_write_undoes_only_itself(tmp_path):
    from charbot.memory import Turn
    from charbot.memory_sqlite import SqliteStore

    store = SqliteStore(tmp_path / "m.db")
    store.sync._db.execute("CREATE TRIGGER refuse BEFORE INSERT ON messages WHEN NEW.content = 'boom' "
                           "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    commits = []
    store.sync._db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    busy, release = threading.Event(), threading.Event()
    first = asyncio.ensure_future(store._thread.call(lambda: (busy.set(), release.wait(10))))
    assert await asyncio.to_thread(busy.wait, 10)
    writes = [asyncio.ensure_future(store.add_exchange(f"c{i}", [Turn("user", "boom" if i == 1 else f"hi {i}"), Turn("assistant", "ok")], f"x{i}"))
              for i in range(3)]
    await asyncio.sleep(0)
    release.set()
    outcomes = await asyncio.gather(*writes, return_exceptions=True)
    await first
    assert outcomes[0] is None and outcomes[2] is None and "refused" in str(outcomes[1])
    assert commits == ["COMMIT"]  # three writes, one commit
    assert [await store.count_messages(f"c{i}") for i in range(3)] == [2, 0, 2]  # c1's user turn undone with it
    await store.close()
