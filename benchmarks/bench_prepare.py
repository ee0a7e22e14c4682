"""`charbot prepare` on generated scripts of 100k and 1M lines: throughput, linear time, flat memory.

Each size runs in a fresh subprocess; peak RSS comes from os.wait4 (that child only). Baselines measured in
the same run: a plain `csv.reader` pass over the same file (speed), and a child that only imports
charbot.prepare (memory). Usage: .venv/bin/python benchmarks/bench_prepare.py [--lines 1000000]
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

SPEAKERS = ["Orla", "Pip", "Dr. Hollis", "Mayor Grubb", "Tamsin", "GULL ", "\u00a0FERRYMAN", "Mrs Penhallow"]
WORDS = (
    "sea kettle storm sprat lantern gull tide fog bell harbour step ninth wind rope salt boat island tea "
    "biscuit council light reef north cold warm steady hold ring bright dark morning night wave"
).split()


def generate(path: Path, lines: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["episode", "name", "line"])
        for i in range(lines):
            episode = f"Episode {i // 400}"  # 400 lines an episode, like a TV script
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 18))).capitalize() + "."
            if i % 97 == 0:
                text = "(sighs) " + text
            w.writerow([episode, rng.choice(SPEAKERS), text])


CHILD_PREPARE = """
import sys, time
from charbot.prepare import prepare
t = time.perf_counter()
r = prepare(sys.argv[1], "Orla", sys.argv[2], val_fraction=0.1)
print(time.perf_counter() - t, r.report.rows_read, r.report.examples["train"] + r.report.examples["val"])
"""
CHILD_CSV = """
import csv, sys, time
t = time.perf_counter()
n = sum(1 for _ in csv.reader(open(sys.argv[1], encoding="utf-8", newline="")))
print(time.perf_counter() - t, n, 0)
"""
CHILD_IMPORT = "import charbot.prepare; print(0, 0, 0)"


def run_child(code: str, *args: str) -> tuple[float, int, int, float]:
    """(seconds inside the child, rows, examples, peak RSS MiB) for one fresh interpreter."""
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode})")
    secs, rows, examples = out.split()
    rss_kib = usage.ru_maxrss  # Linux: KiB
    return float(secs), int(rows), int(examples), rss_kib / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=1_000_000)
    args = ap.parse_args()
    small_n, big_n = args.lines // 10, args.lines
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small, big = tmp / "small.csv", tmp / "big.csv"
        generate(small, small_n)
        generate(big, big_n)
        print(f"generated {small_n:,} lines ({small.stat().st_size / 2**20:.1f} MiB) and {big_n:,} lines ({big.stat().st_size / 2**20:.1f} MiB)")
        _, _, _, base_rss = run_child(CHILD_IMPORT)
        csv_s, _, _, _ = run_child(CHILD_CSV, str(big))
        s_time, s_rows, s_ex, s_rss = run_child(CHILD_PREPARE, str(small), str(tmp / "out_small"))
        b_time, b_rows, b_ex, b_rss = run_child(CHILD_PREPARE, str(big), str(tmp / "out_big"))
    print(f"baseline: import only peak RSS {base_rss:.0f} MiB; plain csv.reader {big_n / csv_s:,.0f} lines/s")
    print(f"{small_n:>9,} lines: {s_time:6.2f} s  {s_rows / s_time:>9,.0f} lines/s  peak RSS {s_rss:5.0f} MiB  examples {s_ex:,}")
    print(f"{big_n:>9,} lines: {b_time:6.2f} s  {b_rows / b_time:>9,.0f} lines/s  peak RSS {b_rss:5.0f} MiB  examples {b_ex:,}")
    print(f"time ratio {big_n // small_n}x lines: {b_time / s_time:.2f}x (linear = {big_n / small_n:.0f}x)")
    print(f"peak RSS ratio: {b_rss / s_rss:.2f}x (flat = 1.00x); above import baseline: {s_rss - base_rss:.0f} MiB vs {b_rss - base_rss:.0f} MiB")
    print(f"prepare vs plain csv.reader speed: {(b_rows / b_time) / (big_n / csv_s):.2f}x")


if __name__ == "__main__":
    main()
