"""Useful (non-padding) training tokens/s: charbot's bucketed (default) and packed batches vs the tutorial's
fixed-length padded blocks.

Identical work on every side: the same model and the same examples, each seen exactly once (one epoch over a
fixed subset), the same batch size and length limit, measured one after the other in this run, so the ratio is
fair even on a busy machine (absolute numbers are not). The useful tokens are counted, and must come out equal.

    .venv/bin/python benchmarks/bench_train.py [--data PREPARED_DIR] [--base-model REF] [--examples 64]

Without --data the project's sample script is prepared into a temporary directory.
Target: the default (bucketed) ≥ 2.5× the padded recipe.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def sample_data(root: Path) -> Path:
    from charbot.factory import sample_script_path
    from charbot.prepare import prepare

    return prepare(sample_script_path(), "Orla", root / "data", context=4, val_fraction=0.1, force=True).out_dir


def train_subset(data: Path, root: Path, examples: int) -> Path:
    """The first `examples` training examples, without val.jsonl (validation would cost time without measuring
    training): every batching strategy trains on exactly these, once."""
    out = root / "subset"
    out.mkdir()
    lines = (data / "train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:examples]
    (out / "train.jsonl").write_text("".join(lines), encoding="utf-8")
    return out


def run(data: Path, base: str | None, batching: str, batch: int, max_length: int, root: Path, threads: int | None) -> dict:
    from charbot.train.config import TrainConfig
    from charbot.train.loop import train

    cfg = TrainConfig(data=data, output_dir=root / batching, base_model=base, batching=batching, epochs=1, batch_size=batch,
                      max_length=max_length, eval_steps=0, save_steps=10_000, progress=False, threads=threads, learning_rate=1e-5)
    m = train(cfg).metrics
    return {"batching": batching, "useful_tokens": m["useful_tokens"], "tokens_per_s": m["useful_tokens_per_s"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="a `charbot prepare` directory (default: the sample script)")
    ap.add_argument("--base-model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument("--examples", type=int, default=64, help="examples each strategy trains on, once")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256, help="the padded recipe's block length")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = train_subset(args.data or sample_data(root), root, args.examples)
        results = [run(data, args.base_model, b, args.batch_size, args.max_length, root, args.threads) for b in ("padded", "packed", "bucketed")]
    if len({r["useful_tokens"] for r in results}) != 1:
        raise SystemExit(f"the strategies saw different tokens ({[r['useful_tokens'] for r in results]}): not the same work")
    base = results[0]["tokens_per_s"]
    print(f"{'batching':<10} {'useful tokens':>14} {'useful tok/s':>13} {'vs padded':>10}")
    for r in results:
        print(f"{r['batching']:<10} {r['useful_tokens']:>14,} {r['tokens_per_s']:>13,.1f} {r['tokens_per_s'] / base:>9.2f}x")
    ratio = results[2]["tokens_per_s"] / base
    print(f"bucketed (default) / padded (tutorial recipe): {ratio:.2f}x (target >= 2.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
