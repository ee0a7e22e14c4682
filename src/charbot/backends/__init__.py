"""Backends by name, one line each. Modules are imported only when chosen, so serving never imports torch by accident."""

from __future__ import annotations

import importlib

from charbot.backends.base import Backend, Completion, Message, Prompt
from charbot.errors import ConfigError
from charbot.models import guess_backend

BACKENDS = {
    "llamacpp": "charbot.backends.llamacpp:LlamaCppBackend",
    "transformers": "charbot.backends.transformers:TransformersBackend",
    "remote": "charbot.backends.remote:RemoteBackend",
}
EXTRAS = {"transformers": "train", "remote": "remote"}  # the pip extra a backend's packages come with

__all__ = ["Backend", "Completion", "Message", "Prompt", "BACKENDS", "backend_class", "create_backend"]


def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise ConfigError(
            f"unknown backend '{name}'", f"use one of: auto, {', '.join(BACKENDS)} (setting 'backend', CHARBOT_BACKEND or --backend)"
        )
    module, _, attr = BACKENDS[name].partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        extra = EXTRAS.get(name)
        raise ConfigError(
            f"backend '{name}' needs a package that is not installed ({exc.name})",
            f"pip install 'charbot[{extra}]'" if extra else "reinstall charbot",
        ) from None


def create_backend(settings) -> Backend:
    name = settings.backend
    if name == "auto":
        name = guess_backend(settings.model, settings.remote.base_url)
    return backend_class(name).from_settings(settings)
