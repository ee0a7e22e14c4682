"""Flags shared by the commands that talk (chat, discord): each maps onto a Settings field."""

from __future__ import annotations

import functools
import logging
import os

import click

from charbot.config import CONFIG_ENV, Settings, load_settings

MODEL_OPTIONS = [
    click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML settings file (default ./charbot.toml)."),
    click.option("--model", "-m", help="GGUF file, model directory or hub id (default: embedded SmolLM2-135M)."),
    click.option("--backend", "-b", help="auto, llamacpp, transformers or remote."),
    click.option("--base-url", help="OpenAI-compatible server for the remote backend, e.g. http://127.0.0.1:8000/v1."),
    click.option("--persona", "-p", type=click.Path(dir_okay=False), help="Character card JSON (default: the sample character)."),
    click.option("--db", "db_path", type=click.Path(dir_okay=False), help="SQLite memory file."),
    click.option("--max-new-tokens", type=int, help="Cap on tokens per reply."),
    click.option("--temperature", type=float, help="Sampling temperature."),
    click.option("--top-k", type=int, help="Top-k sampling."),
    click.option("--top-p", type=float, help="Top-p (nucleus) sampling."),
    click.option("--seed", type=int, help="Sampling seed."),
    click.option("--prompt-format", type=click.Choice(["auto", "chat", "dialogpt"]), help="How turns become a prompt."),
]


def model_options(fn):
    for option in reversed(MODEL_OPTIONS):
        fn = option(fn)

    @functools.wraps(fn)
    def wrapper(*args, config_file=None, **kwargs):
        if config_file:
            os.environ[CONFIG_ENV] = config_file
        names = {"model", "backend", "base_url", "persona", "db_path", "max_new_tokens", "temperature", "top_k", "top_p", "seed", "prompt_format"}
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
        settings = load_settings(**overrides)
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return fn(*args, settings=settings, **kwargs)

    return wrapper


__all__ = ["model_options", "Settings"]
