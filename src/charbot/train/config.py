"""Training settings: one dataclass whose fields carry their help text (TRL style) and become CLI flags."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from charbot.errors import ConfigError


def opt(default: Any, help: str, choices: tuple[str, ...] | None = None):
    meta = {"help": help}
    if choices:
        meta["choices"] = choices
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """`charbot train` settings. Every field is a `--kebab-case` flag; `help` is its documentation."""

    data: Path = opt(Path("prepared"), "Directory from `charbot prepare` holding train.jsonl, val.jsonl and persona.json.")
    output_dir: Path = opt(Path("charbot-model"), "Where the trained model, model card, metrics and loss plot are written.")
    base_model: str | None = opt(None, "HF directory, hub id (e.g. microsoft/DialoGPT-small) or .gguf file. Empty: the embedded SmolLM2-135M-Instruct.")
    method: str = opt("full", "full: update every weight; lora: train low-rank adapters (PEFT) and merge them into the saved model.", ("full", "lora"))
    lora_r: int = opt(16, "LoRA rank.")
    lora_alpha: int = opt(32, "LoRA scaling (alpha / r multiplies the adapter output).")
    lora_dropout: float = opt(0.05, "Dropout on the LoRA adapter input.")
    prompt_format: str = opt("auto", "chat: the model's chat template with the persona as system message; dialogpt: turns joined by EOS (the tutorial's format); auto: chat when the tokenizer has a template.", ("auto", "chat", "dialogpt"))
    no_system: bool = opt(False, "Drop the persona system message from training examples (the model must learn the character from the lines alone).")
    loss_on: str = opt("last", "all: every assistant message in an example (the character's earlier lines in its context too); last: only the example's own line. prepare's examples overlap, so with 'all' a line is trained on again in the examples that follow it.", ("all", "last"))
    name_replies: bool | None = opt(None, "Show the character's turns as 'Name: line', like the other speakers' (and like the Discord prompt); the name is context, not loss. Default: chosen from the data (on with --cast data).")
    cast_first: bool | None = opt(None, "Default: chosen from the data (on when it has other speakers' examples). With `prepare --cast` data: train on the other speakers' examples first, then on the character's own, each phase for --epochs (or --max-steps) with its own warm-up and decay. The cast teaches the show's words; the character's own pass, last, sets the voice.")
    max_length: int = opt(256, "Longest training example in tokens; older context turns are dropped first to fit.")
    batching: str = opt("bucketed", "bucketed: batches of similar-length examples, little padding (fastest on CPU); packed: examples concatenated padding-free, kept apart by position_ids (best with flash-attention on GPU); padded: fixed-length padded blocks (the tutorial's recipe, for comparison).", ("bucketed", "packed", "padded"))
    epochs: float | None = opt(None, "Passes over the training data (with --cast-first: over the cast). Default: chosen from the data.")
    character_epochs: float | None = opt(None, "With --cast-first: passes over the character's own examples in the second phase. Default: chosen from the data (else --epochs).")
    max_steps: int = opt(-1, "Stop after this many optimizer steps (overrides --epochs when > 0).")
    batch_size: int = opt(8, "Examples per device per step.")
    grad_accum: int = opt(1, "Steps to accumulate gradients over before an optimizer update.")
    learning_rate: float | None = opt(None, "Peak learning rate (LoRA usually wants ~10x more). Default: chosen from the data.")
    warmup_ratio: float = opt(0.05, "Fraction of steps spent warming the learning rate up.")
    weight_decay: float = opt(0.0, "AdamW weight decay.")
    seed: int = opt(42, "Random seed (shuffling, dropout, LoRA init).")
    logging_steps: int = opt(5, "Log training loss every this many steps.")
    eval_steps: int = opt(50, "Compute validation loss every this many steps (0: only at the end). With early stopping: twice a pass instead.")
    early_stopping: bool = opt(False, "Score val twice a pass; stop once --patience evaluations in a row have not beaten the lowest validation loss by --stop-margin, and end on the latest checkpoint within that margin of the lowest.")
    patience: int = opt(2, "With early stopping: evaluations in a row without a clearly lower validation loss before training stops.")
    stop_margin: float = opt(0.01, "With early stopping: the share by which a validation loss must beat the lowest so far to count as lower (smaller differences are noise on a few dozen lines).")
    save_steps: int = opt(100, "Write a checkpoint every this many steps (for --resume). With early stopping: at each evaluation instead.")
    save_total_limit: int = opt(2, "Checkpoints kept on disk.")
    resume: bool = opt(False, "Continue from the latest checkpoint in OUTPUT_DIR/checkpoints.")
    gradient_checkpointing: bool = opt(False, "Recompute activations in the backward pass: less memory, ~30% slower.")
    threads: int | None = opt(None, "CPU threads for torch (default: all cores).")
    push_to_hub: str | None = opt(None, "After saving, upload OUTPUT_DIR to this hub repo (needs HF_TOKEN).")
    progress: bool = opt(True, "Show a progress bar with loss and tokens/s.")

    def validate(self) -> TrainConfig:
        checks = [
            (self.max_length >= 16, "max_length", "must be at least 16"),
            (self.batch_size >= 1, "batch_size", "must be at least 1"),
            (self.grad_accum >= 1, "grad_accum", "must be at least 1"),
            (self.learning_rate is None or self.learning_rate > 0, "learning_rate", "must be positive"),
            (self.epochs is None or self.epochs > 0 or self.max_steps > 0, "epochs", "must be positive (or set --max-steps)"),
            (self.character_epochs is None or self.character_epochs > 0, "character_epochs", "must be positive"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio", "must be in [0, 1)"),
            (self.lora_r >= 1, "lora_r", "must be at least 1"),
            (self.patience >= 1, "patience", "must be at least 1"),
            (0 <= self.stop_margin < 1, "stop_margin", "must be in [0, 1)"),
        ]
        for ok, name, msg in checks:
            if not ok:
                raise ConfigError(f"invalid training setting --{name.replace('_', '-')}: {msg}", "fix the flag value")
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"invalid training setting --{f.name.replace('_', '-')}: {getattr(self, f.name)!r}", f"use one of {', '.join(choices)}")
        return self

    def to_dict(self) -> dict:
        return {f.name: (str(v) if isinstance(v := getattr(self, f.name), Path) else v) for f in fields(self)}
