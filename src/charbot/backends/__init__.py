"""Backends by name. Modules are imported only when chosen, so serving never imports torch by accident."""

from __future__ import annotations

import importlib

from charbot.backends.base import Backend, Capabilities, Completion, Message, Prompt
from charbot.errors import ConfigError
from charbot.models import embedded_model_path, guess_backend

BACKENDS = {
    "llamacpp": "charbot.backends.llamacpp:LlamaCppBackend",
    "transformers": "charbot.backends.transformers:TransformersBackend",
    "remote": "charbot.backends.remote:RemoteBackend",
}

__all__ = ["Backend", "Capabilities", "Completion", "Message", "Prompt", "BACKENDS", "backend_class", "create_backend"]


def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise ConfigError(
            f"unknown backend '{name}'", f"use one of: auto, {', '.join(BACKENDS)} (setting 'backend', CHARBOT_BACKEND or --backend)"
        )
    module, _, attr = BACKENDS[name].partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        extra = {"transformers": "train", "remote": "remote"}.get(name, "")
        raise ConfigError(
            f"backend '{name}' needs a package that is not installed ({exc.name})",
            f"pip install 'charbot[{extra}]'" if extra else "reinstall charbot",
        ) from None


def create_backend(settings) -> Backend:
    name = settings.backend
    if name == "auto":
        name = guess_backend(settings.model, settings.base_url)
    cls = backend_class(name)
    if name == "llamacpp" and settings.parallel > 1:
        from charbot.backends.llamacpp_batched import LlamaCppBatchedBackend

        return LlamaCppBatchedBackend(
            settings.model or embedded_model_path(), context_window=settings.context_window, threads=settings.threads, parallel=settings.parallel
        )
    if name == "llamacpp":
        return cls(settings.model or embedded_model_path(), context_window=settings.context_window, threads=settings.threads, seed=settings.seed)
    if name == "transformers":
        if not settings.model:
            raise ConfigError("the transformers backend needs a model", "pass --model DIR_OR_HUB_ID (e.g. microsoft/DialoGPT-small)")
        batch = {"parallel": settings.parallel} if "parallel" in settings.model_fields_set else {}
        return cls(settings.model, device=settings.device, context_window=settings.context_window, threads=settings.threads, **batch)
    return cls.from_settings(settings)
