"""What a training run leaves behind besides weights: generation defaults, metrics, loss plot, model card."""

from __future__ import annotations

import json
from pathlib import Path

from charbot.generation import GenerationSettings


def generation_config(tokenizer):
    """The tutorial's sampling defaults, so `model.generate()` on the saved model behaves like charbot does."""
    from transformers import GenerationConfig

    g = GenerationSettings()
    return GenerationConfig(
        max_new_tokens=g.max_new_tokens, do_sample=g.do_sample, temperature=g.temperature, top_k=g.top_k, top_p=g.top_p,
        no_repeat_ngram_size=g.no_repeat_ngram_size, repetition_penalty=g.repetition_penalty,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
    )


def loss_curves(log_history: list[dict]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    val = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h and "step" in h]
    return train, val


def plot_losses(log_history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = loss_curves(log_history)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="training loss", color="tab:blue")
    if val:
        ax.plot(*zip(*val), label="validation loss", color="tab:orange", marker="o")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy on the character's tokens")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_metrics(path: Path, metrics: dict) -> None:
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def model_card(character: str, base: str, config: dict, metrics: dict) -> str:
    chosen = config.get("chosen_from_data", {})
    settings = "\n".join(f"| `{k}` | {_fmt(v)}{' (chosen from the data: ' + chosen[k] + ')' if k in chosen else ''} |"
                         for k, v in sorted(config.items()) if k not in ("push_to_hub", "progress", "chosen_from_data"))
    shown = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in sorted(metrics.items()) if k not in ("phases", "loss_curve"))
    phases = "".join(f"\nPhase {i}, {p['phase']}: {p['examples']} examples, {p['steps']} steps, training loss {_fmt(p['train_loss'])}."
                     for i, p in enumerate(metrics.get("phases", []), 1))
    if phases:
        phases = "\nTrained in phases (`cast_first`): the other speakers' examples, then the character's own." + phases + "\n"
    return f"""---
base_model: {base}
library_name: transformers
tags: [charbot, character-chatbot, text-generation]
---

# {character} — a charbot character model

Fine-tuned from `{base}` with `charbot train` on lines spoken by **{character}** in the scripts prepared by
`charbot prepare`. Loss was computed on the character's lines only (context turns are inputs, not targets).

## Use

```bash
charbot chat --model . --persona persona.json        # terminal
charbot discord --model . --persona persona.json     # Discord
charbot export-gguf .                                # faster CPU serving through llama.cpp
```

Sampling defaults (generation_config.json) follow the original tutorial: temperature 0.8, top-k 100,
top-p 0.7, no repeated 3-grams.

## Data

Training examples: {metrics.get("train_examples", "?")}, validation examples: {metrics.get("val_examples", "?")}
(split by whole episodes, scenes or blocks, so validation lines were never seen in training).
{phases}
## Metrics

| metric | value |
|---|---|
{shown}

![loss](loss.png)

## Training settings

| setting | value |
|---|---|
{settings}

## Limits

A small model imitating one character's style from a few hundred lines: it copies tone and catchphrases,
not knowledge, and can say things the character never would. The training scripts' copyright belongs to
their owners; do not publish weights trained on them without permission.
"""
