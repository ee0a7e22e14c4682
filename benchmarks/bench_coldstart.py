"""Cold start: `charbot discord` as a fresh process, from spawn to /healthz 200 (model loaded and warmed,
gateway READY), against the loopback fake Discord of the tests. Default model. Target: <= 2 s.

    python benchmarks/bench_coldstart.py [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]

from fakediscord import FakeDiscord, FakeState  # noqa: E402

TOKEN = "coldstart-token-0123456789"


async def one_start(tmp: Path, extra_env: dict[str, str]) -> tuple[float, float]:
    async with FakeDiscord(FakeState(token=TOKEN)) as fake:
        fake.state.add_guild()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHARBOT_")}
        env.update(
            DISCORD_TOKEN=TOKEN, CHARBOT_DISCORD_API_URL=fake.api_url, CHARBOT_DISCORD_GATEWAY_URL=fake.gateway_url,
            CHARBOT_DB_PATH=str(tmp / "memory.db"), CHARBOT_HEALTH_HOST="127.0.0.1", XDG_DATA_HOME=str(tmp / "xdg"),
        )
        env.update(extra_env)
        spawned = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "charbot", "discord", "--health-port", "0", env=env, cwd=tmp,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        try:
            port = None
            while port is None:
                line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
                if not line:
                    raise SystemExit("charbot discord exited early")
                if m := re.search(r"health page on http://[\d.]+:(\d+)/", line):
                    port = int(m.group(1))
            health_up = time.perf_counter()
            async with aiohttp.ClientSession() as http:
                while True:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                        if r.status == 200:
                            break
                    await asyncio.sleep(0.02)
            ready = time.perf_counter()
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.communicate(), 30)
    return health_up - spawned, ready - spawned


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
