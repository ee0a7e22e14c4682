"""A conversation's next turn pays only for its new tokens: the prompt cache on and off, and the floor, in one run.

Twelve conversations with the sample character, interleaved round-robin (channel after channel, as Discord
delivers them), each growing to 20 exchanges, on the embedded model with one sequence (charbot's default):
greedy replies of a fixed length (EOS ignored, --max-tokens). The two configurations — prompt cache on (the
default budget) and off (only what the one sequence kept) — each run in a process of its own (side_process.py
says why), taking turns message by message, with the same messages.

Per turn: latency (the engine's whole reply), prompt tokens read (not reused), and the floor measured in the same
run: `new prompt tokens × prefill cost + generated tokens × one decode step`, where the new prompt tokens are
those the previous turn's cells do not hold (what any cache must read) and the costs are calibrated in the same
process before the conversations (prefill cost per token at several lengths, interpolated; one decode step).

    python benchmarks/bench_prompt_cache.py [--conversations 12] [--exchanges 20] [--max-tokens 24]

Targets: with the cache, a follow-up turn's p50 <= 1.3x its floor, and p95 <= 0.5x the no-cache p95 from turn
10 on; RSS inside the cache budget plus the model.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MESSAGES = [
    "What do you do when the fog rolls in?", "Tell me about the worst storm you ever saw.", "How do you keep the lamp burning?",
    "Do you ever get lonely up here?", "What's for supper tonight?", "Who was keeper before you?", "What are the gulls saying?",
    "Is the ninth step still loose?", "Why is the kettle always on?", "What does Gerald think of the weather?",
]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


# --- the child: one engine, one configuration ------------------------------------------------------------------
async def child(cache: bool, max_tokens: int, threads: int) -> None:
    import psutil

    from charbot.backends.base import Prompt, of_conversation
    from charbot.backends.kv_cache import common_prefix
    from charbot.backends.llamacpp import LlamaCppBackend
    from charbot.engine import Engine
    from charbot.factory import sample_card_path
    from charbot.generation import GenerationSettings
    from charbot.memory_sqlite import SqliteStore
    from charbot.models import embedded_model_path
    from charbot.persona import load_card

    backend = LlamaCppBackend(embedded_model_path(), context_window=2048, threads=threads, cache_bytes=None if cache else 0)
    settings = GenerationSettings(max_new_tokens=max_tokens, do_sample=False, no_repeat_ngram_size=0, ignore_eos=True)
    engine = Engine(backend, SqliteStore(Path(tempfile.mkdtemp()) / "m.db"), load_card(sample_card_path()), settings)
    await engine.warm_up()
    worker = backend.worker

    async def read(text: str) -> float:
        start = time.perf_counter()
        await backend.complete(Prompt(text=text), settings.but(max_new_tokens=1))
        return time.perf_counter() - start

    # calibration: one decode step, and the prefill cost of n new tokens after a kept start
    base = " ".join(MESSAGES) * 3
    await read(base + ".")  # held: the next two read one token each, then generate 64 and 1 tokens
    step = (await _timed(backend, Prompt(text=base + "."), settings.but(max_new_tokens=64)) - await read(base + ".")) / 63
    prefill = []
    for n in (8, 16, 32, 64, 128, 256, 512):
        extra = " ".join(["harbour"] * n)
        tokens = len(backend.prompt_tokens(Prompt(text=f"{base} {extra}"))) - len(backend.prompt_tokens(Prompt(text=base)))
        times = []
        for _ in range(3):  # the median of three: one busy moment on a shared machine must not bend the curve
            await read(base)
            times.append(await read(f"{base} {extra}"))
        prefill.append((tokens, sorted(times)[1]))
    print(json.dumps({"step": step, "prefill": prefill}), flush=True)

    last: dict[str, tuple[int, ...]] = {}
    for line in sys.stdin:
        conversation, text = json.loads(line)
        prompt = tuple(backend.prompt_tokens((await engine.build_prompt(conversation, text, speaker="Pip"))[0].prompt))
        new = len(prompt) - min(common_prefix(prompt, last.get(conversation, ())), len(prompt) - 1)
        before = backend.cache_stats().get("reused_tokens", 0)
        start = time.perf_counter()
        reply = await engine.reply(conversation, text, speaker="Pip")
        seconds = time.perf_counter() - start
        reused = backend.cache_stats()["reused_tokens"] - before
        last[conversation] = next(tokens for tokens, owner in worker.kept.values() if of_conversation(owner, conversation))
        print(json.dumps({"seconds": seconds, "prompt": len(prompt), "read": len(prompt) - reused, "new": new,
                          "generated": reply.completion_tokens, "rss": psutil.Process().memory_info().rss,
                          "stored": backend.cache_stats().get("stored_bytes", 0)}), flush=True)


async def _timed(backend, prompt, settings) -> float:
    start = time.perf_counter()
    await backend.complete(prompt, settings)
    return time.perf_counter() - start


# --- the parent --------------------------------------------------------------------------------------------------
class Side:
    def __init__(self, name: str, process: asyncio.subprocess.Process, calibration: dict):
        self.name, self.process, self.calibration = name, process, calibration
        points = sorted(calibration["prefill"])
        self._xs, self._ys = [p[0] for p in points], [p[1] for p in points]
        self.turns: list[dict] = []

    @classmethod
    async def start(cls, name: str, cache: bool, args) -> Side:
        process = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--child", "on" if cache else "off", "--max-tokens", str(args.max_tokens), "--threads", str(args.threads),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
        )
        return cls(name, process, json.loads(await process.stdout.readline()))

    def prefill_cost(self, n: int) -> float:
        """Seconds to read n new tokens: the calibration points, linearly between them."""
        if n <= 0:
            return 0.0
        i = min(max(bisect.bisect_left(self._xs, n), 1), len(self._xs) - 1)
        x0, x1, y0, y1 = self._xs[i - 1], self._xs[i], self._ys[i - 1], self._ys[i]
        return y0 + (y1 - y0) * (n - x0) / (x1 - x0)

    async def turn(self, conversation: str, text: str, exchange: int) -> None:
        self.process.stdin.write((json.dumps([conversation, text]) + "\n").encode())
        await self.process.stdin.drain()
        t = json.loads(await self.process.stdout.readline())
        t["exchange"] = exchange
        t["floor"] = self.prefill_cost(t["new"]) + max(0, t["generated"] - 1) * self.calibration["step"]
        self.turns.append(t)

    async def stop(self) -> None:
        self.process.stdin.close()
        await self.process.wait()


def report(on: Side, off: Side, args) -> None:
    print(f"{args.conversations} conversations x {args.exchanges} exchanges, interleaved; greedy {args.max_tokens}-token replies; "
          f"threads {args.threads}; load {os.getloadavg()[0]:.1f}")
    print(f"calibration (cache on / off): decode step {on.calibration['step'] * 1000:.1f} / {off.calibration['step'] * 1000:.1f} ms; "
          f"prefill {', '.join(f'{n} tok {s * 1000:.0f} ms' for n, s in on.calibration['prefill'])}")
    print("| turns | side | p50 | p95 | prompt tokens (mean) | read per turn (mean) | floor p50 | p50 / floor |")
    print("|---|---|---|---|---|---|---|---|")
    for label, low in (("2-20", 2), ("10-20", 10)):
        for side in (on, off):
            turns = [t for t in side.turns if t["exchange"] >= low]
            if not turns:
                continue
            secs = [t["seconds"] for t in turns]
            ratio = pct([t["seconds"] / t["floor"] for t in turns], 0.5)
            print(f"| {label} | {side.name} | {pct(secs, .5):.2f} s | {pct(secs, .95):.2f} s | {sum(t['prompt'] for t in turns) / len(turns):.0f} | "
                  f"{sum(t['read'] for t in turns) / len(turns):.0f} | {pct([t['floor'] for t in turns], .5):.2f} s | {ratio:.2f} |")
    late_on = [t["seconds"] for t in on.turns if t["exchange"] >= 10] or [float("nan")]
    late_off = [t["seconds"] for t in off.turns if t["exchange"] >= 10] or [float("nan")]
    follow = [t["seconds"] / t["floor"] for t in on.turns if t["exchange"] >= 2]
    print(f"cache on: follow-up p50 / floor {pct(follow, .5):.2f} (target <= 1.3); p95 from turn 10, on / off "
          f"{pct(late_on, .95) / pct(late_off, .95):.2f} (target <= 0.5)")
    rss_on, rss_off, stored = on.turns[-1]["rss"], off.turns[-1]["rss"], on.turns[-1]["stored"]
    print(f"RSS at the end: cache on {rss_on / 2**20:.0f} MiB, off {rss_off / 2**20:.0f} MiB; the difference "
          f"{(rss_on - rss_off) / 2**20:.0f} MiB against {stored / 2**20:.0f} MiB of saved states held")


async def main(args) -> None:
    on, off = await Side.start("cache on", True, args), await Side.start("cache off", False, args)
    for exchange in range(1, args.exchanges + 1):
        for c in range(args.conversations):
            text = f"{MESSAGES[(c + exchange) % len(MESSAGES)]} ({c}.{exchange})"
            for side in (on, off) if (c + exchange) % 2 else (off, on):  # alternate who goes first
                await side.turn(f"conversation-{c}", text, exchange)
        print(f"  exchange {exchange} done", file=sys.stderr, flush=True)
    for side in (on, off):
        await side.stop()
    report(on, off, args)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--conversations", type=int, default=12)
    ap.add_argument("--exchanges", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--child", choices=("on", "off"))
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT / "src"))
        asyncio.run(child(args.child == "on", args.max_tokens, args.threads))
    else:
        asyncio.run(main(args))
