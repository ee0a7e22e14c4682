"""Memory stores: what one turn costs (history read + exchange write), SQLite vs PostgreSQL, and 1,000
conversations at once through the engine with the scripted model, watching the event loop's lag (issue 18).

    .venv/bin/python benchmarks/bench_memory.py [--turns 300] [--conversations 1000] [--rounds 3]

PostgreSQL is a real server this script starts on a loopback port (tests/pg_server.py: initdb in a temporary
directory; fsync on, as a production server runs). Sides:
- **sqlite inline**: today's store before this change, its calls made on the event loop (the baseline);
- **sqlite pooled**: the first async SQLite store (each call handed to a one-thread pool on its own);
- **sqlite**: the async SQLite store (calls handed to the store's own thread in batches: store_thread.py);
- **postgres**: the async PostgreSQL store (psycopg 3 with a pool), over TCP on 127.0.0.1;
- **postgres async**: the same with `synchronous_commit=off` (in the URL: `?options=-c%20synchronous_commit%3Doff`).

Per-turn cost: each turn of a conversation that already holds 40 turns reads its history (as the engine does,
up to 400 turns) and writes the exchange, one turn at a time, the sides alternating turn by turn. Loop lag: a
task asks to wake every 1 ms; how late it wakes is how long something held the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "src")]

from charbot.engine import HISTORY_FETCH, Engine  # noqa: E402
from charbot.factory import sample_card_path  # noqa: E402
from charbot.memory import Turn, create_store  # noqa: E402
from charbot.memory_sqlite import SqliteMemory  # noqa: E402
from charbot.persona import load_card  # noqa: E402
from charbot.scheduler import Scheduler  # noqa: E402
from conftest import ScriptedBackend  # noqa: E402
from pg_server import PostgresServer  # noqa: E402

EXCHANGE = [Turn("user", "Is the lamp lit tonight, Orla?", "Sam"), Turn("assistant", "Aye, it burns till dawn, sprat.", "Orla")]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class LoopLag:
    """How late a task that wants to wake every `tick` seconds wakes: the longest time the loop was held."""

    def __init__(self, tick: float = 0.001):
        self.tick = tick
        self.lags: list[float] = []
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            self._asleep = time.perf_counter()
            await asyncio.sleep(self.tick)
            self.lags.append(time.perf_counter() - self._asleep - self.tick)

    def __enter__(self) -> LoopLag:
        self._asleep = time.perf_counter()
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc) -> None:
        # a wake-up still due when the work ended counts too (work that never yields leaves only this one)
        self.lags.append(max(0.0, time.perf_counter() - self._asleep - self.tick))
        self._task.cancel()

    def summary(self) -> str:
        return f"loop lag p99 {pct(self.lags, 0.99) * 1000:.2f} ms, max {max(self.lags) * 1000:.2f} ms"


class Steps:
    """How long each callback the loop ran held it (a task's step from one await to the next): the longest is
    the longest the loop was blocked in one go. In the store-only runs every task is store calls."""

    def __init__(self):
        self.durations: list[float] = []
        self._run = asyncio.events.Handle._run
        self._active = False

    def __enter__(self) -> Steps:
        run, durations = self._run, self.durations
        self._active = True

        def timed(handle) -> None:
            start = time.perf_counter()
            run(handle)
            if self._active:  # the step that leaves the measured block goes on to other work: not counted
                durations.append(time.perf_counter() - start)

        asyncio.events.Handle._run = timed
        return self

    def __exit__(self, *exc) -> None:
        self._active = False
        asyncio.events.Handle._run = self._run

    def summary(self) -> str:
        over = sum(d > 0.005 for d in self.durations)
        return f"longest step {max(self.durations) * 1000:.2f} ms, {over} of {len(self.durations)} steps over 5 ms"


class InlineSqlite:
    """Today's way (before the async store): the synchronous SQLite store called on the event loop."""

    def __init__(self, path: Path):
        self.sync = SqliteMemory(path)

    async def open(self):
        pass

    async def get_persona(self, cid):
        return self.sync.get_persona(cid)

    async def history(self, cid, limit=200):
        return self.sync.history(cid, limit)

    async def count_messages(self, cid=None):
        return self.sync.count_messages(cid)

    async def add_exchange(self, cid, turns, exchange_id=None):
        self.sync.add_exchange(cid, turns, exchange_id)

    async def close(self):
        self.sync.close()


class PooledSqlite(InlineSqlite):
    """The first async store: each call handed to a one-thread pool (`run_in_executor`), one wake-up of the
    thread and one of the event loop per call. (charbot's store hands calls over in batches: store_thread.py.)"""

    def __init__(self, path: Path):
        super().__init__(path)
        self.pool = ThreadPoolExecutor(1)

    async def _call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def history(self, cid, limit=200):
        return await self._call(self.sync.history, cid, limit)

    async def count_messages(self, cid=None):
        return await self._call(self.sync.count_messages, cid)

    async def get_persona(self, cid):
        return await self._call(self.sync.get_persona, cid)

    async def add_exchange(self, cid, turns, exchange_id=None):
        await self._call(self.sync.add_exchange, cid, turns, exchange_id)

    async def close(self):
        await self._call(self.sync.close)
        self.pool.shutdown()


async def per_turn(stores: dict, turns: int) -> None:
    print(f"\nper-turn store cost (history read of up to {HISTORY_FETCH} turns + exchange write), {turns} turns per side, sides alternating")
    for name, store in stores.items():
        for i in range(20):
            await store.add_exchange("bench", EXCHANGE, f"fill-{i}")
    times: dict[str, list[float]] = {name: [] for name in stores}
    steps: dict[str, list[float]] = {name: [] for name in stores}
    for t in range(turns):
        for name, store in stores.items():
            with Steps() as timed:
                start = time.perf_counter()
                await store.history("bench", HISTORY_FETCH)
                await store.add_exchange("bench", EXCHANGE, f"t{t}")
                times[name].append(time.perf_counter() - start)
            steps[name] += timed.durations or times[name][-1:]  # calls that never yield hold the loop throughout
    for name, values in times.items():
        print(f"  {name:15s} p50 {pct(values, 0.5) * 1000:6.3f} ms   p95 {pct(values, 0.95) * 1000:6.3f} ms   "
              f"mean {statistics.fmean(values) * 1000:6.3f} ms   longest loop step {max(steps[name]) * 1000:6.3f} ms")


async def store_lag(name: str, store, conversations: int, *, gc_paused: bool = False) -> None:
    """Only store calls, `conversations` at once: what the store alone does to the loop. With `gc_paused`,
    Python's cyclic garbage collector is off meanwhile: its pauses (which land in whichever step allocates
    when it runs) are then not counted against the store."""
    async def one(n: int) -> None:
        for t in range(3):
            await store.history(f"lag-{n}", HISTORY_FETCH)
            await store.add_exchange(f"lag-{n}", EXCHANGE, f"lag-{n}-{t}")

    gc.collect()
    if gc_paused:
        gc.disable()
    try:
        with LoopLag() as lag, Steps() as steps:
            started = time.perf_counter()
            await asyncio.gather(*(one(n) for n in range(conversations)))
            seconds = time.perf_counter() - started
    finally:
        gc.enable()
    label = f"{name}{', gc paused' if gc_paused else ''}"
    print(f"  {label:25s} {conversations * 3 / seconds:6.0f} turns/s; {lag.summary()}; {steps.summary()}")


async def through_engine(name: str, store, conversations: int, turns: int) -> None:
    """`conversations` users at once, `turns` messages each, through the engine and the scripted model."""
    backend = ScriptedBackend(["Aye, it burns till dawn, sprat."], parallel=64)
    engine = Engine(backend, store, load_card(sample_card_path()), scheduler=Scheduler(64, max_queue=None, timeout=None))

    async def user(n: int) -> None:
        for t in range(turns):
            await engine.reply(f"{name}-{n}", f"Message {t}: is the lamp lit?", speaker=f"sailor{n}")

    with LoopLag() as lag, Steps() as steps:
        started = time.perf_counter()
        await asyncio.gather(*(user(n) for n in range(conversations)))
        seconds = time.perf_counter() - started
    assert engine.memory_status == "ok"
    print(f"  {name:25s} {conversations * turns / seconds:6.0f} turns/s ({conversations} conversations x {turns} turns in "
          f"{seconds:.1f} s); {lag.summary()}; {steps.summary()}")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--turns", type=int, default=300, help="turns per side for the per-turn cost")
    ap.add_argument("--conversations", type=int, default=1000)
    ap.add_argument("--engine-turns", type=int, default=3, help="messages per conversation through the engine")
    args = ap.parse_args()
    server = PostgresServer(options={"fsync": "on"})
    server.start()
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        import psycopg

        print(f"PostgreSQL {psycopg.connect(**server.admin_params()).info.server_version} on 127.0.0.1:{server.port} (fsync on); "
              f"SQLite {__import__('sqlite3').sqlite_version} in {tmp} (WAL, synchronous=NORMAL)")
        # synchronous_commit=off: a commit returns before its WAL reaches the disk (what SQLite's WAL with
        # synchronous=NORMAL does); a crash of the database's host may lose the last few hundred ms of turns
        relaxed = server.new_database("bench_relaxed") + "?options=-c%20synchronous_commit%3Doff"
        stores = {"sqlite inline": InlineSqlite(tmp / "inline.db"), "sqlite pooled": PooledSqlite(tmp / "pooled.db"), "sqlite": create_store(tmp / "async.db"),
                  "postgres": create_store(server.new_database("bench_turns")), "postgres async": create_store(relaxed)}
        for store in stores.values():
            await store.open()
        with LoopLag() as idle:
            await asyncio.sleep(2)
        print(f"idle loop on this machine (the noise floor of every lag below): {idle.summary()}")
        await per_turn(stores, args.turns)
        print(f"\nstore calls only, {args.conversations} conversations at once (3 turns each)")
        for name, store in stores.items():
            await store_lag(name, store, args.conversations)
        for name in ("sqlite pooled", "sqlite", "postgres"):
            await store_lag(name, stores[name], args.conversations, gc_paused=True)
        for store in stores.values():
            await store.close()
        print(f"\nthrough the engine (scripted model, 64 generations at once), {args.conversations} conversations at once")
        for name, store in (("sqlite inline", InlineSqlite(tmp / "engine-inline.db")), ("sqlite pooled", PooledSqlite(tmp / "engine-pooled.db")),
                            ("sqlite", create_store(tmp / "engine.db")),
                            ("postgres", create_store(server.new_database("bench_engine")))):
            await store.open()
            await through_engine(name, store, args.conversations, args.engine_turns)
            await store.close()
    finally:
        server.remove()


if __name__ == "__main__":
    asyncio.run(main())
