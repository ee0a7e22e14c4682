"""Assemble an Engine from Settings: the one place transports get their engine from."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from charbot.backends import create_backend
from charbot.config import Settings
from charbot.engine import Engine
from charbot.errors import PersonaError
from charbot.generation import GenerationSettings
from charbot.memory import MemoryStore
from charbot.persona import CharacterCard, load_card
from charbot.scheduler import Scheduler, backend_capacity

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
        beside = (beside if beside.is_dir() else beside.parent) / "persona.json"
        if beside.is_file():
            return beside
    return sample_card_path()


def load_personas(settings: Settings) -> tuple[CharacterCard, dict[str, CharacterCard]]:
    default = load_card(default_persona_path(settings))
    personas = {default.name: default}
    if settings.persona_dir is not None:
        directory = Path(settings.persona_dir).expanduser()
        if not directory.is_dir():
            raise PersonaError(f"persona_dir {directory} is not a directory", "set CHARBOT_PERSONA_DIR to a folder of card .json files")
        for path in sorted(directory.glob("*.json")):
            card = load_card(path)
            personas.setdefault(card.name, card)
    return default, personas


def build_engine(settings: Settings, *, backend=None, store: MemoryStore | None = None) -> Engine:
    default, personas = load_personas(settings)
    backend = backend if backend is not None else create_backend(settings)
    return Engine(
        backend,
        store if store is not None else MemoryStore(settings.resolved_db_path()),
        default,
        GenerationSettings.from_settings(settings),
        prompt_format=settings.prompt_format,
        user_name=settings.user_name,
        fallback_reply=settings.fallback_reply,
        personas=personas,
        scheduler=Scheduler(backend_capacity(backend), max_queue=1_000_000, timeout=settings.queue_timeout),
    )
