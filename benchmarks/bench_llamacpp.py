"""Single-stream generation: charbot's llama.cpp path vs raw llama-cpp-python, same GGUF/prompt/settings.

Prints tokens/s for both (medians over alternating rounds), their ratio (target >= 0.95), and the time from
process start to the first reply token in a fresh process (target <= 2 s after imports).

    python benchmarks/bench_llamacpp.py [--rounds 8] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

from charbot.backends.llamacpp import LlamaCppBackend
from charbot.engine import Engine
from charbot.factory import sample_card_path
from charbot.generation import GenerationSettings
from charbot.memory import MemoryStore
from charbot.models import embedded_model_path
from charbot.persona import load_card

QUESTION = "Tell me about the worst storm you ever saw."


async def charbot_path(engine: Engine, i: int) -> tuple[int, float]:
    start = time.perf_counter()
    reply = await engine.reply(f"bench-{i}", QUESTION)  # a fresh conversation: the same prompt every round
    return reply.completion_tokens, time.perf_counter() - start


def raw_path(llm, messages, settings: GenerationSettings, seed: int) -> tuple[int, float]:
    start = time.perf_counter()
    out = llm.create_chat_completion(
        messages=messages, max_tokens=settings.max_new_tokens, temperature=settings.temperature,
        top_k=settings.top_k, top_p=settings.top_p, repeat_penalty=settings.repetition_penalty,
        stop=list(settings.stop), seed=seed,
    )
    return out["usage"]["completion_tokens"], time.perf_counter() - start


FIRST_TOKEN_CHILD = r"""
import asyncio, json, sys, time
t_spawn = float(sys.argv[1])
t0 = time.time()
from charbot.config import load_settings
from charbot.factory import build_engine
t_imported = time.time()
async def main():
    engine = build_engine(load_settings(db_path=sys.argv[2]))
    await engine.warm_up()
    first = []
    await engine.reply("first", "Hello! Who are you?", on_update=lambda text: first or first.append(time.time()))
    return first[0]
t_first = asyncio.run(main())
print(json.dumps({"interpreter": t0 - t_spawn, "imports": t_imported - t0, "after_imports": t_first - t_imported, "total": t_first - t_spawn}))
"""


def first_token(tmpdir: str) -> dict:
    t_spawn = time.time()
    out = subprocess.run(
        [sys.executable, "-c", FIRST_TOKEN_CHILD, str(t_spawn), os.path.join(tmpdir, "first.db")],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()

    import tempfile

    tmp = tempfile.mkdtemp()
    settings = GenerationSettings(max_new_tokens=args.max_tokens)
    backend = LlamaCppBackend(embedded_model_path(), context_window=2048)
    engine = Engine(backend, MemoryStore(os.path.join(tmp, "bench.db")), load_card(sample_card_path()), settings)
    await engine.warm_up()
    built, card = engine.build_prompt("bench-x", QUESTION)
    messages = [{"role": m.role, "content": m.content} for m in built.prompt.messages]
    raw_settings = settings.with_stop(*engine._stops(card, None))

    ours, raw = [], []
    for i in range(args.rounds):  # alternate, so drift in machine speed hits both alike
        n, s = await charbot_path(engine, i)
        ours.append(n / s)
        n, s = raw_path(backend.llm, messages, raw_settings, seed=i)
        raw.append(n / s)
    a, b = statistics.median(ours), statistics.median(raw)
    print(f"single-stream tokens/s over {args.rounds} alternating rounds, max {args.max_tokens} new tokens, {os.cpu_count()} cores")
    print(f"  charbot engine (llama.cpp): median {a:6.1f} tok/s  (min {min(ours):.1f}, max {max(ours):.1f})")
    print(f"  raw llama-cpp-python:       median {b:6.1f} tok/s  (min {min(raw):.1f}, max {max(raw):.1f})")
    print(f"  ratio charbot/raw: {a / b:.3f}  (target >= 0.95)")
    await backend.aclose()

    ft = [first_token(tmp) for _ in range(3)]
    best = min(ft, key=lambda r: r["total"])
    med = {k: statistics.median(r[k] for r in ft) for k in best}
    print("fresh process to first reply token (median of 3):")
    print(f"  interpreter start {med['interpreter']:.2f} s, imports {med['imports']:.2f} s, "
          f"load+warm-up+first token {med['after_imports']:.2f} s (target <= 2 s), total {med['total']:.2f} s")


if __name__ == "__main__":
    asyncio.run(main())
