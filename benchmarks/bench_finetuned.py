"""A fine-tuned model served through llama.cpp vs the embedded SmolLM2 Q4_1, single stream, in one run.

Exports MODEL_DIR (a `charbot train` output; default: the embedded model's own weights, dequantised, which is
what a fine-tune of it looks like to llama.cpp) to GGUF at each precision, then serves every file with the same
backend settings and prompt: greedy, EOS ignored, exactly --max-tokens tokens per reply, rounds alternating
between the files so drift in machine speed hits all alike. Prefill (time to the first token) and decode (ms per
later token) are reported separately, each as a ratio to the embedded model measured in the same rounds.

    python benchmarks/bench_finetuned.py [MODEL_DIR] [--rounds 20] [--dtypes f16,q8_0,q4_1] [--threads N]

Target for serving fine-tuned models: q4_1 decode >= 0.8x the embedded model's tokens/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from charbot.backends.base import Message, Prompt
from charbot.backends.llamacpp import LlamaCppBackend
from charbot.generation import GenerationSettings
from charbot.models import embedded_model_path

PROMPT = Prompt(messages=(Message("system", "You are the character."), Message("user", "Where are we going today?")))


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


async def one(backend: LlamaCppBackend, settings: GenerationSettings) -> tuple[float, float]:
    """(prefill s, decode s per token) of one reply; the prompt is read afresh (a raw-text prompt in between
    leaves nothing of it in the prefix cache)."""
    await backend.complete(Prompt(text="#"), settings.but(max_new_tokens=1))
    start = time.perf_counter()
    first = None
    async for _piece in backend.stream(PROMPT, settings):
        first = first or time.perf_counter()
    done = time.perf_counter()
    return first - start, (done - first) / (settings.max_new_tokens - 1)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir", type=Path, nargs="?", help="a `charbot train` output (default: the embedded model's weights)")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--dtypes", default="f16,q8_0,q4_1")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    from charbot.export.gguf import export_gguf
    from charbot.models import resolve_base

    model_dir = args.model_dir or Path(resolve_base(None))
    out = Path(tempfile.mkdtemp())
    files = {"embedded SmolLM2 q4_1": embedded_model_path()}
    for dtype in args.dtypes.split(","):
        files[f"fine-tuned {dtype}"] = export_gguf(model_dir, out / f"model-{dtype}.gguf", dtype)
    settings = GenerationSettings(max_new_tokens=args.max_tokens, do_sample=False, no_repeat_ngram_size=0, ignore_eos=True)
    backends = {name: LlamaCppBackend(path, context_window=512, threads=args.threads) for name, path in files.items()}
    for backend in backends.values():
        await backend.load()
        await one(backend, settings)  # untimed: page the weights in
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in backends}
    for _ in range(args.rounds):
        for name, backend in backends.items():
            times[name].append(await one(backend, settings))
    base_pre = pct([t[0] for t in times["embedded SmolLM2 q4_1"]], .5)
    base_dec = pct([t[1] for t in times["embedded SmolLM2 q4_1"]], .5)
    print(f"{model_dir}: greedy, exactly {args.max_tokens} tokens, {args.rounds} alternating rounds, threads {args.threads}, "
          f"load {os.getloadavg()[0]:.1f}")
    print("| model | size | prefill p50 | vs embedded | decode p50 | tok/s | vs embedded |")
    print("|---|---|---|---|---|---|---|")
    for name, values in times.items():
        pre, dec = pct([t[0] for t in values], .5), pct([t[1] for t in values], .5)
        print(f"| {name} | {files[name].stat().st_size / 1e6:.1f} MB | {pre * 1000:.1f} ms | {base_pre / pre:.2f}x | "
              f"{dec * 1000:.2f} ms | {1 / dec:.1f} | {base_dec / dec:.2f}x |")
    for backend in backends.values():
        await backend.aclose()


if __name__ == "__main__":
    asyncio.run(main())
