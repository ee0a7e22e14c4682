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

from platformdirs import user_data_dir
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, create_model, field_validator, model_validator
from pydantic_settings import (
    BaseSettings, DotEnvSettingsSource, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError,
)

from charbot.errors import ConfigError
from charbot.generation import GenerationSettings

ENV_PREFIX = "CHARBOT_"
CONFIG_ENV = "CHARBOT_CONFIG"
DEFAULT_CONFIG_FILE = "charbot.toml"


def default_data_dir() -> Path:
    return Path(user_data_dir("charbot", appauthor=False))


def _http_url(value: str | None) -> str | None:
    if value and not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return value


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MemorySettings(_Group):
    db_path: Path | None = Field(None, description="SQLite memory file. Default: <user data dir>/memory.db.")
    retention_days: float | None = Field(None, gt=0, description="Forget messages older than this many days (empty: keep everything).")
    max_messages_per_conversation: int | None = Field(
        None, ge=2, le=10_000_000, description="Keep only this many newest messages per conversation (empty: no cap)."
    )
    prune_interval: float = Field(3600.0, gt=0, le=7 * 86400, description="Seconds between retention sweeps while serving.")

    def resolved_db_path(self) -> Path:
        return self.db_path or default_data_dir() / "memory.db"


class RemoteSettings(_Group):
    base_url: str | None = Field(
        None, description="OpenAI-compatible server (vLLM, TGI, llama.cpp server, Ollama), e.g. http://host:8000/v1."
    )
    provider: str | None = Field(None, description="Hugging Face Inference Provider (e.g. together), or 'auto'.")
    timeout: float = Field(60.0, gt=0, le=3600, description="Seconds before a remote request gives up.", json_schema_extra={"flat": "remote_timeout"})
    max_retries: int = Field(4, ge=0, le=20, description="Retries on 429/503/connection errors.", json_schema_extra={"flat": "remote_max_retries"})
    hf_token_env: str = Field("HF_TOKEN", description="Env var holding the Hugging Face token.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Env var holding the key for an OpenAI-compatible server.")

    _check_url = field_validator("base_url")(_http_url)


class DiscordSettings(_Group):
    token_env: str = Field("DISCORD_TOKEN", description="Env var holding the bot token.")
    api_url: str | None = Field(None, description="REST base URL (a proxy, or a test server).")
    gateway_url: str | None = Field(None, description="Gateway websocket URL (a proxy, or a test server).")
    shard_count: int | None = Field(None, ge=1)
    shard_ids: list[int] | None = None
    chat_channels: list[int] = Field(default_factory=list, description="Channels where every message is answered.")
    allow_dms: bool = True
    allowed_users: list[int] = Field(default_factory=list)
    blocked_users: list[int] = Field(default_factory=list)
    allowed_roles: list[int] = Field(default_factory=list)
    blocked_roles: list[int] = Field(default_factory=list)
    allowed_channels: list[int] = Field(default_factory=list)
    blocked_channels: list[int] = Field(default_factory=list)
    allowed_guilds: list[int] = Field(default_factory=list)
    blocked_guilds: list[int] = Field(default_factory=list)
    cooldown_seconds: float = Field(2.0, ge=0)
    max_inflight: int | None = Field(
        None, ge=1, le=256, description="Generations running at once (empty: what the backend serves at once, its `parallel`)."
    )
    max_queue: int = Field(16, ge=0, le=10_000, description="Requests waiting beyond those; more get 'busy'.")
    stream: bool = Field(False, description="Stream replies by editing the message (at most once a second).")
    ping_author: bool = Field(False, description="Let the reply ping the author it replies to.")

    _check_url = field_validator("api_url")(_http_url)

    @field_validator("gateway_url")
    @classmethod
    def _ws_url(cls, value: str | None) -> str | None:
        # Checked here too, not only at login: a typo should fail before the model loads.
        if value and not value.startswith(("ws://", "wss://")):
            raise ValueError("must start with ws:// or wss://")
        return value

    @model_validator(mode="after")
    def _shards(self) -> DiscordSettings:
        if self.shard_ids and self.shard_count is None:
            raise ValueError("shard_ids is set without shard_count (set CHARBOT_DISCORD_SHARD_COUNT too)")
        return self


class HealthSettings(_Group):
    host: str = Field("0.0.0.0", description="Address of the health/metrics page.")
    port: int = Field(8080, ge=0, le=65535, description="Port of the health/metrics page (0: pick a free one).")


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
    persona: str | None = Field(None, description="Character Card (V2 or V1) JSON file. Empty: the sample character.")
    persona_dir: Path | None = Field(None, description="Directory of card JSON files offered by /persona.")
    user_name: str = Field("User", description="How the terminal user is called in prompts ({{user}}).")
    fallback_reply: str = Field("...", min_length=1, description="Said when the model produces nothing usable.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"

    # --- groups ------------------------------------------------------------------------------------
    generation: GenerationSettings = GenerationSettings()
    memory: MemorySettings = MemorySettings()
    remote: RemoteSettings = RemoteSettings()
    discord: DiscordSettings = DiscordSettings()
    health: HealthSettings = HealthSettings()

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
GROUP_PREFIX = {"generation": "", "memory": "", "remote": "", "discord": "discord_", "health": "health_"}


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
