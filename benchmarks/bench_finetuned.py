"""A fine-tuned model served through llama.cpp vs the embedded SmolLM2 Q4_1: single-stream tokens/s.

Exports MODEL_DIR (a `charbot train` output) to GGUF at each precision (if not there yet), then times greedy
64-token replies on each file and on the embedded model, alternating, and prints each median and its ratio to the
embedded model (target for serving fine-tuned models: >= 0.8).

    python benchmarks/bench_finetuned.py MODEL_DIR [--rounds 5] [--dtypes f16,q8_0,q4_1]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from charbot.backends.base import Message, Prompt
from charbot.backends.llamacpp import LlamaCppBackend
from charbot.export.gguf import export_gguf
from charbot.generation import GenerationSettings
from charbot.models import embedded_model_path

GREEDY = GenerationSettings(max_new_tokens=64, do_sample=False, no_repeat_ngram_size=0)
PROMPT = Prompt(messages=(Message("system", "You are the character."), Message("user", "Where are we going today?")))


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dtypes", default="f16,q8_0,q4_1")
    args = ap.parse_args()

    files = {"embedded SmolLM2 q4_1": embedded_model_path()}
    for dtype in args.dtypes.split(","):
        path = args.model_dir / f"model-{dtype}.gguf"
        files[f"fine-tuned {dtype}"] = path if path.is_file() else export_gguf(args.model_dir, dtype=dtype)
    backends = {}
    for name, path in files.items():
        backends[name] = LlamaCppBackend(path, context_window=512)
        await backends[name].load()
    speeds: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(args.rounds):  # alternate, so drift in machine speed hits all alike
        for name, backend in backends.items():
            start = time.perf_counter()
            out = await backend.complete(PROMPT, GREEDY)
            speeds[name].append(out.completion_tokens / (time.perf_counter() - start))
    base = statistics.median(speeds["embedded SmolLM2 q4_1"])
    print(f"greedy 64-token replies, {args.rounds} alternating rounds")
    for name, values in speeds.items():
        size = files[name].stat().st_size / 1e6
        print(f"  {name:24s} {size:6.1f} MB  median {statistics.median(values):6.1f} tok/s  ratio {statistics.median(values) / base:.2f}")
    for backend in backends.values():
        await backend.aclose()


if __name__ == "__main__":
    asyncio.run(main())
