"""Settings from (highest first) command-line flags, environment (CHARBOT_*), `.env`, and a TOML file.

Settings come in groups (generation, memory, remote, discord, health) read as `settings.discord.api_url`. Each
setting also has one flat name — `temperature`, `db_path`, `remote_timeout`, `discord_api_url` — that is its
environment variable (CHARBOT_DISCORD_API_URL), its top-level TOML key (or `api_url` in a `[discord]` table) and
its command-line flag (--discord-api-url). Every source goes through the same validation, once.

Secrets are never settings themselves: a `*_env` setting names the environment variable that holds the secret
(llmcord's convention), so config files can be shared and logged without leaking tokens.
"""

from __future__ import annotations

import contextvars
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, create_model
from pydantic_settings import (
    BaseSettings, DotEnvSettingsSource, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError,
)

from charbot.errors import ConfigError
from charbot.generation import GenerationSettings
from charbot.memory import redact
from charbot.settings_groups import (
    DiscordSettings, HealthSettings, MemorySettings, PromptCacheSettings, RemoteSettings, ServeSettings, default_data_dir,
)

__all__ = ["Settings", "load_settings", "secret", "required_secret", "default_data_dir", "FLAT", "field_info", "CONFIG_ENV"]

ENV_PREFIX = "CHARBOT_"
CONFIG_ENV = "CHARBOT_CONFIG"
DEFAULT_CONFIG_FILE = "charbot.toml"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, frozen=True)

    # --- model and backend -------------------------------------------------------------------------
    backend: Literal["auto", "llamacpp", "transformers", "remote"] = Field(
        "auto", description="Which backend runs the model; auto picks from the model path or base_url."
    )
    model: str | None = Field(None, description="GGUF file, HF model directory, or hub id. Empty: the embedded SmolLM2-135M-Instruct.")
    prompt_format: Literal["auto", "chat", "dialogpt"] = Field(
        "auto", description="chat: system persona + turns via the model's chat template; dialogpt: turns joined by EOS."
    )
    context_window: int = Field(2048, ge=128, le=1_048_576, description="Tokens of context the model is run with.")
    threads: int | None = Field(None, ge=1, le=512, description="CPU threads for local backends (default: all).")
    parallel: int | None = Field(
        None, ge=1, le=64,
        description="Generations the backend serves at once: llama.cpp sequences decoded together, transformers rows per "
        "batch, remote requests in flight (empty: the backend's default, 1, 4 and 8).",
    )
    device: str = Field("auto", description="transformers backend: cpu, cuda, cuda:N or auto.")
    queue_timeout: float | None = Field(
        60.0, gt=0, le=86400, description="Seconds a request may wait for the model before the user is told to retry (empty: no limit)."
    )

    # --- character ---------------------------------------------------------------------------------
    persona: str | None = Field(None, description="Character card: JSON (V1/V2/V3), PNG or CHARX. Empty: the sample character.")
    persona_dir: Path | None = Field(None, description="Directory of character cards (.json, .png, .charx): more characters (Discord's /persona, serve's models).")
    lorebook: str | None = Field(
        None, description="Lorebook file (lorebook_v3 JSON or a SillyTavern world-info export) for every character, after the card's own book."
    )
    user_name: str = Field("User", description="How the terminal user is called in prompts ({{user}}).")
    fallback_reply: str = Field("...", min_length=1, description="Said when the model produces nothing usable.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"

    # --- groups ------------------------------------------------------------------------------------
    generation: GenerationSettings = GenerationSettings()
    memory: MemorySettings = MemorySettings()
    remote: RemoteSettings = RemoteSettings()
    discord: DiscordSettings = DiscordSettings()
    health: HealthSettings = HealthSettings()
    prompt_cache: PromptCacheSettings = PromptCacheSettings()
    serve: ServeSettings = ServeSettings()

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        flat = _flat_model()
        return (
            init_settings,
            _Nested(settings_cls, EnvSettingsSource(flat)),
            _Nested(settings_cls, DotEnvSettingsSource(flat, env_file=".env", env_file_encoding="utf-8")),
            TomlSource(settings_cls, _config_path(_CONFIG_FILE.get())),
        )


# --- flat names ------------------------------------------------------------------------------------
GROUP_PREFIX = {
    "generation": "", "memory": "", "remote": "", "discord": "discord_", "health": "health_", "prompt_cache": "prompt_cache_",
    "serve": "serve_",
}


def _flat_names() -> dict[str, tuple[str, ...]]:
    """Every setting's flat name → its path in Settings."""
    names: dict[str, tuple[str, ...]] = {}
    for name, field in Settings.model_fields.items():
        if name not in GROUP_PREFIX:
            names[name] = (name,)
            continue
        for sub, subfield in field.annotation.model_fields.items():
            extra = subfield.json_schema_extra if isinstance(subfield.json_schema_extra, dict) else {}
            names[str(extra.get("flat", GROUP_PREFIX[name] + sub))] = (name, sub)
    return names


FLAT = _flat_names()
FLAT_OF = {path: name for name, path in FLAT.items()}


def field_info(flat_name: str):
    """The pydantic field behind a flat name (its type and description)."""
    path = FLAT[flat_name]
    fields = Settings.model_fields if len(path) == 1 else Settings.model_fields[path[0]].annotation.model_fields
    return fields[path[-1]]


class _FlatBase(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")


_FLAT_MODEL: type[BaseSettings] | None = None


def _flat_model() -> type[BaseSettings]:
    """A shadow model with one optional field per flat name: what the env and .env sources read (lists as JSON)."""
    global _FLAT_MODEL
    if _FLAT_MODEL is None:
        _FLAT_MODEL = create_model("FlatSettings", __base__=_FlatBase, **{n: (field_info(n).annotation | None, None) for n in FLAT})
    return _FLAT_MODEL


def nest(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Flat names (and group tables) → the nested shape of Settings. Unknown names are a ConfigError."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in GROUP_PREFIX and isinstance(value, dict):
            for sub, subvalue in value.items():
                if (key, sub) not in FLAT_OF:
                    raise ConfigError(f"{where}: unknown setting '{sub}' in [{key}]", "check the spelling against the README's settings table")
                out.setdefault(key, {})[sub] = subvalue
            continue
        path = FLAT.get(key)
        if path is None:
            raise ConfigError(f"{where}: unknown setting '{key}'", "check the spelling against the README's settings table")
        if len(path) == 1:
            out[key] = value
        else:
            out.setdefault(path[0], {})[path[1]] = value
    return out


class _Nested(PydanticBaseSettingsSource):
    """Wraps a source that reads flat names and hands Settings its nested shape."""

    def __init__(self, settings_cls: type[BaseSettings], inner: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self.inner = inner

    def get_field_value(self, field, field_name):  # required by the base class; __call__ does the work
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return nest({k: v for k, v in self.inner().items() if v is not None}, "environment")


class TomlSource(PydanticBaseSettingsSource):
    """Reads a TOML file: flat names at the top level, or a group's settings in its table (`[discord] api_url`)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None):
        super().__init__(settings_cls)
        self.path = path

    def get_field_value(self, field, field_name):
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            raw = tomllib.loads(self.path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{self.path}: not valid TOML ({exc})", "fix the syntax or remove the file")
        return nest(raw, str(self.path))


_CONFIG_FILE: contextvars.ContextVar[str | Path | None] = contextvars.ContextVar("charbot_config_file", default=None)


def _config_path(explicit: str | Path | None) -> Path | None:
    named, source = (explicit, "--config") if explicit else (os.environ.get(CONFIG_ENV), CONFIG_ENV)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise ConfigError(f"{source} {named}: no such file", "point it at an existing TOML file or leave it out")
        return path
    local = Path(DEFAULT_CONFIG_FILE)
    return local if local.exists() else None


# --- loading ---------------------------------------------------------------------------------------
def load_settings(config: str | Path | None = None, **flags: Any) -> Settings:
    """Settings from `flags` (flat names; None means not given), the environment, `.env` and the TOML file
    (`config`, else $CHARBOT_CONFIG, else ./charbot.toml). Any invalid value is a one-line ConfigError naming it."""
    given = {k: v for k, v in flags.items() if v is not None}
    token = _CONFIG_FILE.set(config)
    try:
        return Settings(**nest(given, "command line"))
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0], given), "fix the value or unset it to use the default") from None
    except SettingsError as exc:
        # A list setting from the environment or .env that is not JSON never reaches validation.
        raise ConfigError(_describe_unparsed(str(exc)), "write it as JSON, e.g. [123, 456]") from None
    finally:
        _CONFIG_FILE.reset(token)


def _describe(error: dict, flags: dict[str, Any]) -> str:
    loc = tuple(str(p) for p in error.get("loc", ()))
    name = FLAT_OF.get(loc[:2]) or FLAT_OF.get(loc[:1]) or ".".join(loc) or "?"
    where = f"--{name.replace('_', '-')}" if name in flags else f"{ENV_PREFIX}{name.upper()} or charbot.toml"
    value = error.get("input")
    if isinstance(value, str):
        value = redact(value)  # a URL's password is never echoed
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"invalid setting '{name}' ({where}){shown}: {error.get('msg', 'invalid')}"


def _describe_unparsed(message: str) -> str:
    found = re.search(r'field "([^"]+)" from source "(\w+)"', message)
    if not found:
        return f"invalid settings: {message}"
    field, source = found.groups()
    where = ".env" if source.startswith("DotEnv") else ENV_PREFIX + field.upper()
    return f"invalid setting '{field}' ({where}): not valid JSON for a list"


def secret(env_var: str, *fallbacks: str) -> SecretStr | None:
    """The secret held by the environment variable `env_var` names (or the first fallback variable that is set)."""
    for name in (env_var, *fallbacks):
        value = os.environ.get(name)
        if value:
            return SecretStr(value)
    return None


def required_secret(env_var: str, missing: str, fix: str) -> str:
    """The secret `env_var` holds, stripped; a ConfigError (`missing` — `fix`) when it is not set."""
    value = secret(env_var)
    if value is None:
        raise ConfigError(missing, fix)
    return value.get_secret_value().strip()
