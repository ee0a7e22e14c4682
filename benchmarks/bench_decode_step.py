"""What one llama.cpp decode step costs at batch 1 and at batch N, on this machine, for a GGUF.

This is the floor under any batching scheduler: serving N conversations at once costs at least one batch-N step
per generated token, so with prompts already cached

    latency(N at once) / latency(1 alone)  >=  step(N) / step(1)
    aggregate tok/s(N) / single-stream     <=  N * step(1) / step(N)

    python benchmarks/bench_decode_step.py [--batch 8] [--threads 2] [GGUF ...]   (default: the embedded model)

Each sequence has its own KV stream holding a 300-token prompt, as in the bot; 32 steps are timed after a
warm-up step. Baseline and batched run in the same process, back to back.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path


def measure(path: Path, batch_n: int, threads: int, steps: int = 32, prompt: int = 300) -> tuple[float, float]:
    import llama_cpp as L
    from llama_cpp._logger import set_verbose

    set_verbose(False)
    L.llama_backend_init()
    model = L.llama_model_load_from_file(str(path).encode(), L.llama_model_default_params())
    cp = L.llama_context_default_params()
    cp.n_ctx = 1024 * batch_n
    cp.n_batch = cp.n_ubatch = 512
    cp.n_seq_max = batch_n
    cp.n_threads = cp.n_threads_batch = threads
    cp.kv_unified = False
    cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = L.llama_init_from_model(model, cp)
    batch = L.llama_batch_init(512, 0, 1)
    rng = random.Random(0)

    def decode(items: list[tuple[int, int, int]]) -> None:
        for i, (token, pos, seq) in enumerate(items):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, True
            batch.seq_id[i][0] = seq
        batch.n_tokens = len(items)
        if L.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    for seq in range(batch_n):  # every sequence holds a prompt, as in the bot
        for start in range(0, prompt, 100):
            decode([(rng.randrange(1000, 30000), p, seq) for p in range(start, min(prompt, start + 100))])

    def step_time(n: int) -> float:
        pos = prompt
        decode([(rng.randrange(1000, 30000), pos, s) for s in range(n)])  # warm-up
        t = time.perf_counter()
        for k in range(1, steps + 1):
            decode([(rng.randrange(1000, 30000), pos + k, s) for s in range(n)])
        return (time.perf_counter() - t) / steps

    one = step_time(1)
    mem = L.llama_get_memory(ctx)
    L.llama_memory_seq_rm(mem, 0, prompt, -1)
    many = step_time(batch_n)
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    L.llama_model_free(model)
    return one, many


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf", nargs="*", type=Path)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    if not args.gguf:
        from charbot.models import embedded_model_path

        args.gguf = [embedded_model_path()]
    print(f"threads {args.threads}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"| model | step at batch 1 | step at batch {args.batch} | ratio | batch-1 tok/s | batch-{args.batch} tok/s | "
          f"floor on N={args.batch}/N=1 latency | ceiling on aggregate / single-stream |")
    print("|---|---|---|---|---|---|---|---|")
    for path in args.gguf:
        one, many = measure(path, args.batch, args.threads)
        print(f"| {path.name} | {one * 1000:.1f} ms | {many * 1000:.1f} ms | {many / one:.2f} | {1 / one:.0f} | "
              f"{args.batch / many:.0f} | {many / one:.2f}x | {args.batch * one / many:.2f}x |")


if __name__ == "__main__":
    main()
