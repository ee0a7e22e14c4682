"""Assemble an Engine from Settings: the one place transports get their engine from."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

from charbot.backends import create_backend
from charbot.backends.base import Backend
from charbot.cards import CARD_SUFFIXES, find_card
from charbot.config import Settings
from charbot.engine import Engine
from charbot.errors import PersonaError
from charbot.lorebook import load_lorebook
from charbot.memory import Store, create_store
from charbot.persona import CharacterCard, load_card
from charbot.scheduler import Scheduler

SAMPLE_CARD = "orla.json"


def sample_card_path() -> Path:
    return Path(str(resources.files("charbot") / "data" / "sample" / SAMPLE_CARD))


def sample_script_path() -> Path:
    return Path(str(resources.files("charbot") / "data" / "sample" / "sample_script.csv"))


def default_persona_path(settings: Settings) -> Path:
    """The configured card; else the one `charbot train` saved beside a fine-tuned model; else the sample."""
    if settings.persona:
        return Path(settings.persona).expanduser()
    if settings.model:
        beside = Path(settings.model).expanduser()
        found = find_card(beside if beside.is_dir() else beside.parent)
        if found is not None:
            return found
    return sample_card_path()


def load_personas(settings: Settings, cast: Sequence[CharacterCard] = ()) -> tuple[CharacterCard, dict[str, CharacterCard]]:
    """The default character and every loaded one; with a `cast`, the default is its first character unless a
    persona is configured."""
    default = load_card(default_persona_path(settings)) if settings.persona or not cast else cast[0]
    personas = {default.name: default, **{c.name: c for c in cast if c.name != default.name}}
    if settings.persona_dir is not None:
        directory = Path(settings.persona_dir).expanduser()
        if not directory.is_dir():
            raise PersonaError(f"persona_dir {directory} is not a directory", "set CHARBOT_PERSONA_DIR to a folder of character cards")
        for path in sorted(p for p in directory.iterdir() if p.suffix.lower() in CARD_SUFFIXES):
            card = load_card(path)
            personas.setdefault(card.name, card)
    return default, personas


def character_backends(settings: Settings, models: Mapping[str, str], default: Backend) -> dict[str, Backend]:
    """A backend per distinct model that characters name (on the configured backend kind); a character naming
    the bot's own model shares the default backend."""
    made: dict[str | None, Backend] = {settings.model: default}
    for model in models.values():
        if model not in made:
            made[model] = create_backend(settings.model_copy(update={"model": model}))
    return {name: made[model] for name, model in models.items()}


def build_engine(
    settings: Settings, *, backend=None, store: Store | None = None, max_inflight: int | None = None, max_queue: int | None = None,
    cast: Sequence[CharacterCard] = (), character_models: Mapping[str, str] | None = None,
) -> Engine:
    """The engine the settings describe. A transport that bounds its load passes `max_inflight` and `max_queue`:
    the scheduler then runs min(max_inflight, what the backend serves at once) generations, and is fixed. A `cast`
    (Discord's --cast) is loaded as characters of this one engine: one backend, one model in memory, for all but
    the characters in `character_models` (name → model), which get one backend per distinct model."""
    default, personas = load_personas(settings, cast)
    backend = backend if backend is not None else create_backend(settings)
    capacity = min(max_inflight or backend.parallel, backend.parallel)
    return Engine(
        backend,
        store if store is not None else create_store(settings.memory.resolved_url(), timeout=settings.memory.memory_timeout),
        default,
        settings.generation,
        prompt_format=settings.prompt_format,
        user_name=settings.user_name,
        fallback_reply=settings.fallback_reply,
        personas=personas,
        scheduler=Scheduler(capacity, max_queue=max_queue, timeout=settings.queue_timeout),
        character_backends=character_backends(settings, character_models or {}, backend),
        lorebooks=[(f"lorebook {Path(settings.lorebook).name}", load_lorebook(settings.lorebook))] if settings.lorebook else (),
    )
