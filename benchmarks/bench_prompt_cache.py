"""A conversation's next turn pays only for its new tokens: the prompt cache on and off, and the floor, in one run.

Twelve conversations with the sample character, interleaved round-robin (channel after channel, as Discord
delivers them), each growing to 20 exchanges, on the embedded model with one sequence (charbot's default):
greedy replies of a fixed length (EOS ignored, --max-tokens). The two configurations — prompt cache on (the
default budget) and off (only what the one sequence kept) — each run in a process of its own (side_process.py
says why), taking turns message by message, with the same messages.

Per turn: latency (the engine's whole reply), prompt tokens read (not reused), and the floor measured in the same
run: `new prompt tokens × prefill cost + generated tokens × one decode step`, where the new prompt tokens are
those the previous turn's cells do not hold (what any cache must read) and the costs are calibrated in the same
process before the conversations (the cost per token of reading a message, and of one decode step, at six context
lengths, interpolated at each turn's prompt length: both grow with what a step attends to).

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

    # calibration at several context lengths (a step's cost grows with what it attends to): one decode step, and
    # the cost per token of reading a ~32-token message after a kept start. Each repetition reads different words,
    # so no saved state can answer it.
    words = ["harbour", "lantern", "seaweed", "gannet", "driftwood", "tiller"]
    points = []
    for ctx in (128, 384, 640, 896, 1152, 1408):
        base = ""
        while len(backend.prompt_tokens(Prompt(text=base))) < ctx:
            base += " " + MESSAGES[len(base) % len(MESSAGES)]
        reads, steps = [], []
        for r in range(3):
            extra = f"{base} " + " ".join([words[(r + ctx) % len(words)]] * 32)
            n = len(backend.prompt_tokens(Prompt(text=extra))) - len(backend.prompt_tokens(Prompt(text=base)))
            await read(base)
            reads.append(await read(extra) / n)
            steps.append((await _timed(backend, Prompt(text=extra), settings.but(max_new_tokens=33)) - await read(extra)) / 32)
        points.append((len(backend.prompt_tokens(Prompt(text=base))), sorted(reads)[1], sorted(steps)[1]))  # medians of three
    print(json.dumps({"points": points}), flush=True)

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
        self.points = sorted(calibration["points"])
        self.turns: list[dict] = []

    @classmethod
    async def start(cls, name: str, cache: bool, args) -> Side:
        process = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--child", "on" if cache else "off", "--max-tokens", str(args.max_tokens), "--threads", str(args.threads),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
        )
        return cls(name, process, json.loads(await process.stdout.readline()))

    def costs(self, context: int) -> tuple[float, float]:
        """(seconds per new prompt token, seconds per decode step) at `context` tokens: the calibration points,
        linearly between them."""
        xs = [p[0] for p in self.points]
        i = min(max(bisect.bisect_left(xs, context), 1), len(xs) - 1)
        (x0, r0, s0), (x1, r1, s1) = self.points[i - 1], self.points[i]
        f = (context - x0) / (x1 - x0)
        return r0 + (r1 - r0) * f, s0 + (s1 - s0) * f

    async def turn(self, conversation: str, text: str, exchange: int) -> None:
        self.process.stdin.write((json.dumps([conversation, text]) + "\n").encode())
        await self.process.stdin.drain()
        t = json.loads(await self.process.stdout.readline())
        t["exchange"] = exchange
        per_token, step = self.costs(t["prompt"])
        t["floor"] = t["new"] * per_token + max(0, t["generated"] - 1) * step
        self.turns.append(t)

    async def stop(self) -> None:
        self.process.stdin.close()
        await self.process.wait()


def report(on: Side, off: Side, args) -> None:
    print(f"{args.conversations} conversations x {args.exchanges} exchanges, interleaved; greedy {args.max_tokens}-token replies; "
          f"threads {args.threads}; load {os.getloadavg()[0]:.1f}")
    for side in (on, off):
        print(f"calibration ({side.name}), per context length: " + "; ".join(
            f"{n} tok: read {r * 1000:.2f} ms/token, step {st * 1000:.1f} ms" for n, r, st in side.points))
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
