"""Early stopping on val, with a margin for noise.

Two checkpoints of one run, scored on 34–44 validation lines, differ by noise of about 0.01 nats: on Rick's
and Morty's val, the paired-bootstrap 95% interval of the loss difference between the first and the second
pass spans −0.008…+0.023 and −0.026…+0.029 (docs/training.md). Ending on whichever checkpoint scored lowest
would pick among those by chance, and throw away training for it. So a loss counts as better only when it
beats the lowest so far by more than `margin` (a share of it), and the run ends on the latest checkpoint
within `margin` of the lowest: an earlier one is restored only when the later ones are clearly worse.
"""

from __future__ import annotations

import math

from transformers import TrainerCallback


class StopOnVal(TrainerCallback):
    """Stop after `patience` evaluations in a row that do not beat the lowest validation loss by more than
    `margin`; mark the checkpoint to end on as the Trainer's best (`best_global_step`), which keeps it from
    checkpoint rotation. `end_on_kept` loads it after training."""

    def __init__(self, patience: int, margin: float):
        self.patience, self.margin = patience, margin
        self.lowest, self.waited, self.done = math.inf, 0, False

    def on_train_begin(self, args, state, control, **kwargs):
        # a resumed run replays the evaluations it has already made
        self.lowest, self.waited, self.done = math.inf, 0, False
        for h in state.log_history:
            if "eval_loss" in h and h.get("step", 0) > 0:
                self.judge(state, h["step"], h["eval_loss"])

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        # step 0 is the score before training (no checkpoint to end on); after training, the final report
        if state.global_step == 0 or self.done or "eval_loss" not in metrics:
            return
        self.judge(state, state.global_step, metrics["eval_loss"])
        if self.waited >= self.patience:
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        self.done = True

    def judge(self, state, step: int, loss: float) -> None:
        self.waited = 0 if loss < self.lowest * (1 - self.margin) else self.waited + 1
        self.lowest = min(self.lowest, loss)
        if loss <= self.lowest * (1 + self.margin):
            state.best_global_step, state.best_metric = step, loss


def ended(state) -> bool:
    """Whether the run a saved TrainerState comes from had ended: all its steps done, or stopped on val (the
    Trainer saves its control flags with each checkpoint, after the evaluation that stopped it)."""
    control = state.stateful_callbacks.get("TrainerControl") or {}
    return bool(state.max_steps and state.global_step >= state.max_steps) or bool(control.get("args", {}).get("should_training_stop"))


def end_on_kept(trainer) -> None:
    """Load the checkpoint StopOnVal chose, where it is not the weights training ended with."""
    state = trainer.state
    if state.best_model_checkpoint and state.best_global_step and state.best_global_step != state.global_step:
        trainer._load_from_checkpoint(state.best_model_checkpoint)


def stopped(state, phase: str) -> dict:
    """Where early stopping left a phase: the step whose weights were kept, and whether it cut the phase short."""
    return {"phase": phase, "kept_step": state.best_global_step or state.global_step, "kept_val_loss": state.best_metric,
            "steps_run": state.global_step, "steps_planned": state.max_steps, "stopped_early": state.global_step < state.max_steps}
