"""Training scales out as the docs say: the same `charbot train` command under `accelerate launch` with two
processes on the CPU (DDP over gloo). Both ranks step, only rank 0 writes, and the loss curve follows one
process with twice the per-device batch."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from train_support import make_prepared, make_tiny_base  # noqa: E402

# Two ranks average their own mean losses where one process averages over all tokens of the same examples,
# and the two runs do not draw identical batches, so the curves drift apart a little as training goes on:
# on this tiny model by at most ~0.12 nats per logged step. A run that had not learned anything (the random
# model's loss is log(400) = 5.99) would be off by ~0.9 by the end.
TOLERANCE = 0.25
FLAGS = ["--max-steps", "12", "--logging-steps", "1", "--eval-steps", "0", "--no-progress", "--threads", "1", "--learning-rate", "1e-2",
         "--batching", "padded", "--max-length", "128", "--warmup-ratio", "0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_train_as_one_with_twice_the_batch(tmp_path):
    data, base = make_prepared(tmp_path / "data"), make_tiny_base(tmp_path / "base")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}  # the CPU path, even on a GPU machine
    train = ["-m", "charbot", "train", str(data), "--base-model", str(base), *FLAGS]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    ddp = subprocess.run([*launch, *train, "-o", str(tmp_path / "ddp"), "--batch-size", "2"], env=env, capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = subprocess.run([sys.executable, *train, "-o", str(tmp_path / "one"), "--batch-size", "4"], env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]

    # both ranks stepped: rank 1 reports its 12 steps, and each step covered two batches of 2 (the epoch
    # count of one process with batches of 4); only rank 0 wrote the output, once
    assert "rank 1: 12 steps" in ddp.stderr and ddp.stderr.count("saved ") == 1
    two, single = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("ddp", "one"))
    examples = sum(1 for _ in (data / "train.jsonl").open())
    assert two["epoch"] == pytest.approx(single["epoch"]) == pytest.approx(12 / math.ceil(examples / 4))  # one process, batches of 2: half
    assert (tmp_path / "ddp" / "model.safetensors").is_file() and not (tmp_path / "ddp" / ".saving").exists()

    curve, reference = [loss for _, loss in two["loss_curve"]], [loss for _, loss in single["loss_curve"]]
    assert len(curve) == len(reference) == 12
    assert max(abs(a - b) for a, b in zip(curve, reference)) < TOLERANCE
    assert reference[0] - reference[-1] > 0.5  # both learned: the tolerance is small against how far they moved
