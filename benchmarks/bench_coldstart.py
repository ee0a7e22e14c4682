"""Cold start: `charbot discord` as a fresh process, from spawn to /healthz 200 (model loaded and warmed,
gateway READY), against the loopback fake Discord of the tests. Default model. Target: <= 2 s.

    python benchmarks/bench_coldstart.py [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from cli_process import DiscordCli, discord_env  # noqa: E402
from fakediscord import FakeDiscord, FakeState  # noqa: E402

TOKEN = "coldstart-token-0123456789"


async def one_start(tmp: Path, extra_env: dict[str, str]) -> tuple[float, float]:
    async with FakeDiscord(FakeState(token=TOKEN)) as fake:
        fake.state.add_guild()
        async with DiscordCli(env=discord_env(fake, tmp, TOKEN, **extra_env), cwd=tmp) as bot:
            await bot.wait_ready(poll=0.02)
            ready = time.perf_counter()
    return bot.health_page_at - bot.started_at, ready - bot.started_at


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=None, help="CHARBOT_PARALLEL for the bot (default: its own default)")
    args = ap.parse_args()
    extra = {"CHARBOT_PARALLEL": str(args.parallel)} if args.parallel else {}
    results = []
    for i in range(args.runs + 1):  # the first run warms the OS file cache and is not counted
        with tempfile.TemporaryDirectory() as tmp:
            r = await one_start(Path(tmp), extra)
        if i:
            results.append(r)
    health = statistics.median(r[0] for r in results)
    ready = statistics.median(r[1] for r in results)
    print(f"charbot discord, default model, parallel {args.parallel or 'default'}, {args.runs} runs (median): health page up {health:.2f} s after spawn, "
          f"ready (model warm + gateway READY) {ready:.2f} s after spawn (target <= 2 s); min {min(r[1] for r in results):.2f}, max {max(r[1] for r in results):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
