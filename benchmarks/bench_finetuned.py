"""A fine-tuned model served through llama.cpp vs the embedded SmolLM2 Q4_1, single stream, in one run.

Exports MODEL_DIR (a `charbot train` output; default: the embedded model's own weights, dequantised, which is
what a fine-tune of it looks like to llama.cpp) to GGUF at each precision, then serves every file with the same
backend settings and prompts (a new one each round, the same for every file): greedy, EOS ignored, exactly
--max-tokens tokens per reply. Each file is served by a process of its own (benchmarks/side_process.py says why),
rounds alternating between them so drift in machine speed hits all alike. Prefill (time to the first token) and
decode (ms per later token) are reported separately, each as a ratio to the embedded model in the same rounds.

    python benchmarks/bench_finetuned.py [MODEL_DIR] [--rounds 20] [--dtypes f16,q8_0,q4_1] [--threads N]

Target for serving fine-tuned models: q4_1 decode >= 0.8x the embedded model's tokens/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

from side_process import Side

from charbot.backends.base import Prompt
from charbot.backends.llamacpp import LlamaCppBackend
from charbot.models import embedded_model_path

SYSTEM = "<|im_start|>system\nYou are the character.<|im_end|>\n"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


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
    vocab = LlamaCppBackend(embedded_model_path(), threads=1)
    await vocab.load()
    texts = [f"{SYSTEM}<|im_start|>user\n({i}) Where are we going today?<|im_end|>\n<|im_start|>assistant\n" for i in range(args.rounds + 1)]
    prompts = [(text, vocab.prompt_tokens(Prompt(text=text))) for text in texts]
    await vocab.aclose()
    sides = {name: await Side.start("charbot", path, args.threads) for name, path in files.items()}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    for i, (text, tokens) in enumerate(prompts):
        for name, side in sides.items():
            ttft, total, n, _ = await side.run(text, tokens, args.max_tokens)
            if i:  # the first round is untimed: it pages the weights in
                times[name].append((ttft, (total - ttft) / (n - 1)))
    for side in sides.values():
        await side.stop()
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


if __name__ == "__main__":
    asyncio.run(main())
