"""`charbot train DATA -o DIR`: fine-tune a model on one character's lines. Flags come from TrainConfig."""

from __future__ import annotations

import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path

import click

from charbot.train.config import TrainConfig

_POSITIONAL = {"data"}


def _click_type(f):
    hint = typing.get_type_hints(TrainConfig)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)] if isinstance(hint, types.UnionType) else [hint]
    base = args[0] if args else hint
    if f.metadata.get("choices"):
        return click.Choice(f.metadata["choices"])
    return {Path: click.Path(path_type=Path), int: int, float: float, str: str}.get(base, str)


def config_options(func):
    """One click option per TrainConfig field: `--kebab-name`, its help text and default."""
    for f in reversed(fields(TrainConfig)):
        if f.name in _POSITIONAL:
            continue
        default = None if f.default is MISSING else f.default
        names = [f"--{f.name.replace('_', '-')}"] + (["-o"] if f.name == "output_dir" else [])
        if f.type in ("bool | None",):  # chosen from the data unless given either way
            flag = f"--{f.name.replace('_', '-')}/--no-{f.name.replace('_', '-')}"
            func = click.option(flag, f.name, default=None, help=f.metadata["help"])(func)
        elif f.type in ("bool", bool):
            flag = f"--{f.name.replace('_', '-')}/--no-{f.name.replace('_', '-')}" if default else names[0]
            func = click.option(flag, f.name, is_flag=True, default=default, show_default=True, help=f.metadata["help"])(func)
        else:
            func = click.option(*names, f.name, type=_click_type(f), default=default, show_default=default is not None, help=f.metadata["help"])(func)
    return func


@click.command("train")
@click.argument("data", type=click.Path(path_type=Path))
@config_options
def train(**kwargs) -> None:
    """Fine-tune a model on DATA (a `charbot prepare` directory); writes a model `charbot chat --model` can load.

    Multi-GPU: `accelerate launch -m charbot train DATA -o DIR` (the same command under accelerate).
    """
    from rich.console import Console

    from charbot.train.hub import push
    from charbot.train.loop import train as run

    cfg = TrainConfig(**kwargs)
    result = run(cfg)
    console = Console(stderr=True)
    m = result.metrics
    if not result.written:  # another process of a distributed run: the main one reports and writes
        console.print(f"rank {result.rank}: {m['steps']} steps, train loss {m['train_loss']:.3f}; the main process writes {result.output_dir}")
        return
    line = f"saved {result.output_dir} — train loss {m['train_loss']:.3f}"
    if "val_perplexity" in m:
        line += f", validation perplexity {m['val_perplexity_before']:.1f} → {m['val_perplexity']:.1f}" if "val_perplexity_before" in m else f", validation perplexity {m['val_perplexity']:.1f}"
    line += f", {m['useful_tokens_per_s']:,.0f} tokens/s"
    console.print(line)
    console.print(f"chat with it: charbot chat --model {result.output_dir} --persona {result.output_dir / 'persona.json'}")
    if cfg.push_to_hub:
        url = push(result.output_dir, cfg.push_to_hub)
        console.print(f"uploaded to {url}")
