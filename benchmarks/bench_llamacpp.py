"""Single-stream generation: charbot's llama.cpp backend vs raw llama-cpp-python (its high-level `Llama`).

Identical work on both sides: the same GGUF, threads and context size; the same prompts (the engine's prompt for a
fresh conversation, one question per round, so both reuse the persona's cached prefix alike; each side checks it
reads the same token ids); greedy decoding with the end-of-generation tokens banned, so every reply is exactly
--max-tokens tokens. Each side runs in a process of its own (benchmarks/side_process.py says why) and rounds
alternate, so drift in machine speed hits both alike. Prefill (time to the first token) and decode (time per
later token) are reported separately, with their ratios. Then a fresh process to the first reply token.

    python benchmarks/bench_llamacpp.py [--rounds 20] [--max-tokens 64] [--threads N]

Target: charbot's decode tok/s >= 0.95x raw llama-cpp-python's; first reply token <= 2 s after imports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from side_process import Side

from charbot.backends.base import Prompt
from charbot.backends.llamacpp import LlamaCppBackend
from charbot.engine import Engine
from charbot.factory import sample_card_path
from charbot.generation import GenerationSettings
from charbot.memory_sqlite import SqliteStore
from charbot.models import embedded_model_path
from charbot.persona import load_card
from charbot.rendering import prompt_text

QUESTIONS = [
    "Tell me about the worst storm you ever saw.", "What do you do when the fog rolls in?", "Who was keeper before you?",
    "How do you keep the lamp burning?", "Do you ever get lonely up here?", "What's for supper tonight?",
]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


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


def report(name: str, rounds: list[tuple[float, float, int, str]]) -> tuple[float, float]:
    prefill = [r[0] for r in rounds]
    decode = [(r[1] - r[0]) / (r[2] - 1) for r in rounds]
    print(f"  {name:<22} prefill p50 {pct(prefill, .5) * 1000:6.1f} ms  p95 {pct(prefill, .95) * 1000:6.1f} ms   "
          f"decode p50 {pct(decode, .5) * 1000:5.2f} ms/token ({1 / pct(decode, .5):5.1f} tok/s)  tokens {rounds[0][2]}")
    return pct(prefill, .5), pct(decode, .5)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    gguf = embedded_model_path()
    # The prompts are rendered and tokenized here, with the model's vocabulary only; the sides generate.
    backend = LlamaCppBackend(gguf, context_window=2048, threads=1)
    engine = Engine(backend, SqliteStore(os.path.join(tmp, "bench.db")), load_card(sample_card_path()), GenerationSettings())
    await backend.load()
    prompts = []
    for i in range(args.rounds):
        text = prompt_text((await engine.build_prompt(f"bench-{i}", QUESTIONS[i % len(QUESTIONS)]))[0].prompt, backend.template)
        prompts.append((text, backend.prompt_tokens(Prompt(text=text))))
    await backend.aclose()

    sides = [await Side.start("charbot", gguf, args.threads), await Side.start("raw", gguf, args.threads)]
    ours, raw = [], []
    for text, tokens in prompts:  # alternating, so drift in machine speed hits both alike
        ours.append(await sides[0].run(text, tokens, args.max_tokens))
        raw.append(await sides[1].run(text, tokens, args.max_tokens))
    for side in sides:
        await side.stop()
    same = sum(a[3] == b[3] for a, b in zip(ours, raw))
    print(f"single stream, {args.rounds} alternating rounds, greedy, exactly {args.max_tokens} tokens each, prompts of "
          f"{len(prompts[-1][1])} tokens, threads {args.threads}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    a_pre, a_dec = report("charbot backend", ours)
    b_pre, b_dec = report("raw llama-cpp-python", raw)
    print(f"  same text in {same}/{args.rounds} rounds")
    print(f"  ratio charbot/raw: decode tok/s {b_dec / a_dec:.3f} (target >= 0.95), prefill time {a_pre / b_pre:.2f}")

    ft = [first_token(tmp) for _ in range(3)]
    med = {k: statistics.median(r[k] for r in ft) for k in ft[0]}
    print("fresh process to first reply token (median of 3):")
    print(f"  interpreter start {med['interpreter']:.2f} s, imports {med['imports']:.2f} s, "
          f"load+warm-up+first token {med['after_imports']:.2f} s (target <= 2 s), total {med['total']:.2f} s")


if __name__ == "__main__":
    asyncio.run(main())
