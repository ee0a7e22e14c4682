"""Progress for training: a rich bar with loss and useful tokens/s, and the token counter behind it."""

from __future__ import annotations

import time

from transformers import TrainerCallback


class CountingCollator:
    """Wraps a collator and counts the real (non-padding) tokens it hands to the model."""

    def __init__(self, inner):
        self.inner = inner
        self.tokens = 0

    def __call__(self, features):
        batch = self.inner(features)
        mask = batch.get("attention_mask")
        self.tokens += int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
        return batch


class TokenRate(TrainerCallback):
    """Useful tokens per second over the training steps (evaluation time excluded)."""

    def __init__(self, counter: CountingCollator):
        self.counter = counter
        self.train_seconds = 0.0
        self.train_tokens = 0
        self._t0 = None
        self._seen = 0

    # Batches are collated before on_step_begin, so tokens are counted from one step end to the next,
    # and evaluation's batches (same collator) are skipped by re-basing after each evaluation.
    def on_train_begin(self, args, state, control, **kw):
        self._seen = self.counter.tokens

    def on_evaluate(self, args, state, control, **kw):
        self._seen = self.counter.tokens

    def on_step_begin(self, args, state, control, **kw):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        if self._t0 is not None:
            self.train_seconds += time.perf_counter() - self._t0
            self.train_tokens += self.counter.tokens - self._seen
            self._seen = self.counter.tokens
            self._t0 = None

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / self.train_seconds if self.train_seconds else 0.0


class RichProgress(TrainerCallback):
    def __init__(self, rate: TokenRate, label: str = "train"):
        self.rate = rate
        self.label = label
        self.progress = None
        self.task = None
        self.loss = float("nan")
        self.val = float("nan")

    def on_train_begin(self, args, state, control, **kw):
        if not state.is_world_process_zero:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn(f"[bold]{self.label}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
            TextColumn("val {task.fields[val]}"), TextColumn("{task.fields[tps]} tok/s"), TimeElapsedColumn(), TimeRemainingColumn(),
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, loss="-", val="-", tps="-")

    def on_step_end(self, args, state, control, **kw):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step, tps=f"{self.rate.tokens_per_second:,.0f}")

    def on_log(self, args, state, control, logs=None, **kw):
        if self.progress is None or not logs:
            return
        if "loss" in logs:
            self.progress.update(self.task, loss=f"{logs['loss']:.3f}")
        if "eval_loss" in logs:
            self.progress.update(self.task, val=f"{logs['eval_loss']:.3f}")

    def on_train_end(self, args, state, control, **kw):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
