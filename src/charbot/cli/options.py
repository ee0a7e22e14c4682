"""Flags that are settings (chat, discord): each is made from its setting, and its value goes through
`load_settings` with every other source, so a flag is validated exactly like CHARBOT_… or charbot.toml."""

from __future__ import annotations

import functools
import logging

import click

from charbot.config import Settings, field_info, load_settings


def setting_option(name: str, *decls: str):
    """A click option for the setting with flat name `name`; `decls` adds short names or replaces the flag."""
    info = field_info(name)
    long = [d for d in decls if d.startswith("--")] or [f"--{name.replace('_', '-')}"]
    short = [d for d in decls if not d.startswith("--")]
    if info.annotation is bool:
        flag = long[0] if "/" in long[0] else f"{long[0]}/--no-{long[0][2:]}"
        return click.option(flag, *short, name, default=None, help=info.description)
    # Strings reach pydantic as they were typed: one validation, one error format naming the flag.
    return click.option(*long, *short, name, default=None, help=info.description)


def settings_options(*specs: tuple[str, ...]):
    """Add `--config` and one option per (setting, *decls) spec; the command gets `settings=Settings`."""

    def decorate(fn):
        names = [spec[0] for spec in specs]

        @functools.wraps(fn)
        def wrapper(*args, config_file=None, **kwargs):
            flags = {name: kwargs.pop(name) for name in names}
            settings = load_settings(config_file, **flags)
            logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            return fn(*args, settings=settings, **kwargs)

        for spec in reversed(specs):
            wrapper = setting_option(*spec)(wrapper)
        return click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML settings file (default ./charbot.toml).")(wrapper)

    return decorate


TALK_SETTINGS = (
    ("model", "-m"), ("backend", "-b"), ("base_url",), ("persona", "-p"), ("lorebook",),
    ("db_path", "--db"), ("memory_url",), ("parallel",),
    ("max_new_tokens",), ("temperature",), ("top_k",), ("top_p",), ("seed",), ("prompt_format",),
)
model_options = settings_options(*TALK_SETTINGS)

__all__ = ["model_options", "settings_options", "setting_option", "Settings", "TALK_SETTINGS"]
