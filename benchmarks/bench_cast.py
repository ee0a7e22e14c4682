"""A cast of five characters on one model against one character: memory and reply latency (issue 17).

Four processes, each one engine on the embedded model (llama.cpp, one sequence): a cast of 1 and a cast of 5,
each with the prompt cache off (only what the one sequence kept) and on (a saved state per character of each
conversation: the persona prefix and the conversation read once per character). The parent sends every
process the same messages, channel after channel as Discord delivers them, one process at a time (side_process.py
says why): with a cast of 5 the message goes to the next character in turn (what a scene does), with a cast of
1 to the one character. The five cards differ only in the character's name, so each turn's prompt is the same
length on both sides; replies are greedy, a fixed number of tokens (EOS ignored).

    python benchmarks/bench_cast.py [--channels 6] [--exchanges 10] [--max-tokens 24]

Targets: RSS with 5 <= 1.1x RSS with 1; p50 reply latency with 5 <= 1.1x with 1 (each with the cache off and on).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["Orla", "Bram", "Wren", "Tamsin", "Corrie"]
MESSAGES = [
    "What do you do when the fog rolls in?", "Tell me about the worst storm you ever saw.", "How do you keep the lamp burning?",
    "Do you ever get lonely up here?", "What's for supper tonight?", "Who was keeper before you?", "What are the gulls saying?",
]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


async def child(cast: int, cache: bool, max_tokens: int, threads: int) -> None:
    import psutil

    from charbot.backends.llamacpp import LlamaCppBackend
    from charbot.engine import Engine
    from charbot.factory import sample_card_path
    from charbot.generation import GenerationSettings
    from charbot.memory_sqlite import SqliteStore
    from charbot.models import embedded_model_path
    from charbot.persona import load_card

    orla = load_card(sample_card_path())
    text = orla.model_dump_json()
    cards = [orla] + [type(orla).model_validate_json(text.replace("Orla", name)) for name in NAMES[1:cast]]
    backend = LlamaCppBackend(embedded_model_path(), context_window=2048, threads=threads, cache_bytes=None if cache else 0)
    settings = GenerationSettings(max_new_tokens=max_tokens, do_sample=False, no_repeat_ngram_size=0, ignore_eos=True)
    engine = Engine(backend, SqliteStore(Path(tempfile.mkdtemp()) / "m.db"), cards[0], settings,
                    personas={c.name: c for c in cards})
    await engine.warm_up()
    print(json.dumps({"ready": True}), flush=True)
    peak = 0
    for line in sys.stdin:
        conversation, text, turn = json.loads(line)
        card = cards[turn % cast]
        start = time.perf_counter()
        reply = await engine.reply(conversation, text, speaker="Pip", persona=card)
        seconds = time.perf_counter() - start
        rss = psutil.Process().memory_info().rss
        peak = max(peak, rss)
        print(json.dumps({"seconds": seconds, "generated": reply.completion_tokens, "prompt": reply.prompt_tokens,
                          "rss": rss, "peak": peak, "stored": backend.cache_stats().get("stored_bytes", 0)}), flush=True)


class Side:
    def __init__(self, name: str, process: asyncio.subprocess.Process):
        self.name, self.process, self.turns = name, process, []

    @classmethod
    async def start(cls, cast: int, cache: bool, args) -> Side:
        process = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--child", str(cast), "--cache", "on" if cache else "off", "--max-tokens", str(args.max_tokens),
            "--threads", str(args.threads), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
        )
        await process.stdout.readline()
        return cls(f"cast {cast}, cache {'on' if cache else 'off'}", process)

    async def turn(self, conversation: str, text: str, turn: int) -> None:
        self.process.stdin.write((json.dumps([conversation, text, turn]) + "\n").encode())
        await self.process.stdin.drain()
        self.turns.append(json.loads(await self.process.stdout.readline()))

    async def stop(self) -> None:
        self.process.stdin.close()
        await self.process.wait()


async def main(args) -> None:
    sides = [await Side.start(cast, cache, args) for cache in (False, True) for cast in (1, 5)]
    for exchange in range(args.exchanges):
        for c in range(args.channels):
            text = f"{MESSAGES[(c + exchange) % len(MESSAGES)]} ({c}.{exchange})"
            order = sides if (c + exchange) % 2 else sides[::-1]  # who goes first alternates
            for side in order:
                await side.turn(f"channel-{c}", text, exchange)
        print(f"  exchange {exchange + 1} done", file=sys.stderr, flush=True)
    for side in sides:
        await side.stop()
    print(f"{args.channels} channels x {args.exchanges} messages, interleaved; greedy {args.max_tokens}-token replies; "
          f"threads {args.threads}; load {os.getloadavg()[0]:.1f}")
    print("| side | p50 | p95 | prompt tokens (mean) | peak RSS | saved states at the end |")
    print("|---|---|---|---|---|---|")
    for side in sides:
        secs = [t["seconds"] for t in side.turns]
        print(f"| {side.name} | {pct(secs, .5):.3f} s | {pct(secs, .95):.3f} s | {sum(t['prompt'] for t in side.turns) / len(secs):.0f} | "
              f"{side.turns[-1]['peak'] / 2**20:.0f} MiB | {side.turns[-1]['stored'] / 2**20:.0f} MiB |")
    for i, cache in ((0, "off"), (2, "on")):
        one, five = sides[i], sides[i + 1]
        p50 = pct([t["seconds"] for t in five.turns], .5) / pct([t["seconds"] for t in one.turns], .5)
        rss = five.turns[-1]["peak"] / one.turns[-1]["peak"]
        print(f"cache {cache}: cast 5 / cast 1 — peak RSS {rss:.3f} (target <= 1.1), p50 latency {p50:.3f} (target <= 1.1)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--channels", type=int, default=6)
    ap.add_argument("--exchanges", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--child", type=int)
    ap.add_argument("--cache", choices=("on", "off"))
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT / "src"))
        asyncio.run(child(args.child, args.cache == "on", args.max_tokens, args.threads))
    else:
        asyncio.run(main(args))
