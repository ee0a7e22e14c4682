"""Settings from (highest first) command-line flags, environment (CHARBOT_*), `.env`, and a TOML file.

Secrets are never settings themselves: a `*_env` setting names the environment variable that holds the
secret (llmcord's convention), so config files can be shared and logged without leaking tokens.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from platformdirs import user_data_dir
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from charbot.errors import ConfigError

ENV_PREFIX = "CHARBOT_"
CONFIG_ENV = "CHARBOT_CONFIG"
DEFAULT_CONFIG_FILE = "charbot.toml"


def default_data_dir() -> Path:
    return Path(user_data_dir("charbot", appauthor=False))


class TomlSource(PydanticBaseSettingsSource):
    """Reads a TOML file; `[discord] api_url = …` is the same setting as top-level `discord_api_url`."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None):
        super().__init__(settings_cls)
        self.path = path

    def get_field_value(self, field, field_name):  # required by the base class; __call__ does the work
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            raw = tomllib.loads(self.path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{self.path}: not valid TOML ({exc})", "fix the syntax or remove the file")
        flat: dict[str, Any] = {}
        for key, value in raw.items():
            if isinstance(value, dict):
                for sub, subvalue in value.items():
                    flat[f"{key}_{sub}"] = subvalue
            else:
                flat[key] = value
        known = set(self.settings_cls.model_fields)
        unknown = sorted(set(flat) - known)
        if unknown:
            raise ConfigError(
                f"{self.path}: unknown setting '{unknown[0]}'",
                "check the spelling against `charbot config` or the README's settings table",
            )
        return flat


def _config_path() -> Path | None:
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.exists():
            raise ConfigError(f"{CONFIG_ENV}={explicit}: no such file", "point it at an existing TOML file or unset it")
        return path
    local = Path(DEFAULT_CONFIG_FILE)
    return local if local.exists() else None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore", validate_default=True
    )

    # --- model and backend -------------------------------------------------------------------------
    backend: Literal["auto", "llamacpp", "transformers", "remote"] = Field(
        "auto", description="Which backend runs the model; auto picks from the model path or base_url."
    )
    model: str | None = Field(
        None, description="GGUF file, HF model directory, or hub id. Empty: the embedded SmolLM2-135M-Instruct."
    )
    prompt_format: Literal["auto", "chat", "dialogpt"] = Field(
        "auto", description="chat: system persona + turns via the model's chat template; dialogpt: turns joined by EOS."
    )
    context_window: int = Field(2048, ge=128, le=1_048_576, description="Tokens of context the model is run with.")
    threads: int | None = Field(None, ge=1, le=512, description="CPU threads for local backends (default: all).")
    parallel: int = Field(
        1, ge=1, le=64, description="llama.cpp: conversations decoded together (continuous batching); 1: one at a time."
    )
    device: str = Field("auto", description="transformers backend: cpu, cuda, cuda:N or auto.")
    queue_timeout: float | None = Field(
        60.0, gt=0, le=86400, description="Seconds a request may wait for the model before the user is told to retry (empty: no limit)."
    )

    # --- persona and memory ------------------------------------------------------------------------
    persona: str | None = Field(None, description="Character Card (V2 or V1) JSON file. Empty: the sample character.")
    persona_dir: Path | None = Field(None, description="Directory of card JSON files offered by /persona.")
    db_path: Path | None = Field(None, description="SQLite memory file. Default: <user data dir>/memory.db.")
    user_name: str = Field("User", description="How the terminal user is called in prompts ({{user}}).")
    retention_days: float | None = Field(
        None, gt=0, description="Forget messages older than this many days (empty: keep everything)."
    )
    max_messages_per_conversation: int | None = Field(
        None, ge=2, le=10_000_000, description="Keep only this many newest messages per conversation (empty: no cap)."
    )
    prune_interval: float = Field(
        3600.0, gt=0, le=7 * 86400, description="Seconds between retention sweeps of the memory store while serving."
    )

    # --- generation (the tutorial's defaults) ------------------------------------------------------
    max_new_tokens: int = Field(64, ge=1, le=8192, description="Cap on tokens generated per reply.")
    do_sample: bool = Field(True, description="Sample (true) or greedy decoding (false).")
    temperature: float = Field(0.8, ge=0.0, le=5.0)
    top_k: int = Field(100, ge=0, le=100_000)
    top_p: float = Field(0.7, gt=0.0, le=1.0)
    no_repeat_ngram_size: int = Field(3, ge=0, le=64, description="Never repeat an n-gram of this size (0: off).")
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    seed: int | None = Field(None, description="Sampling seed for reproducible replies.")
    fallback_reply: str = Field("...", min_length=1, description="Said when the model produces nothing usable.")

    # --- remote inference --------------------------------------------------------------------------
    base_url: str | None = Field(
        None, description="OpenAI-compatible server (vLLM, TGI, llama.cpp server, Ollama), e.g. http://host:8000/v1."
    )
    provider: str | None = Field(None, description="Hugging Face Inference Provider (e.g. together), or 'auto'.")
    remote_timeout: float = Field(60.0, gt=0, le=3600, description="Seconds before a remote request gives up.")
    remote_max_retries: int = Field(4, ge=0, le=20, description="Retries on 429/503/connection errors.")
    hf_token_env: str = Field("HF_TOKEN", description="Env var holding the Hugging Face token.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Env var holding the key for an OpenAI-compatible server.")

    # --- discord -----------------------------------------------------------------------------------
    discord_token_env: str = Field("DISCORD_TOKEN", description="Env var holding the bot token.")
    discord_api_url: str | None = Field(None, description="REST base URL (a proxy, or a test server).")
    discord_gateway_url: str | None = Field(None, description="Gateway websocket URL (a proxy, or a test server).")
    discord_shard_count: int | None = Field(None, ge=1)
    discord_shard_ids: list[int] | None = None
    discord_chat_channels: list[int] = Field(default_factory=list, description="Channels where every message is answered.")
    discord_allow_dms: bool = True
    discord_allowed_users: list[int] = Field(default_factory=list)
    discord_blocked_users: list[int] = Field(default_factory=list)
    discord_allowed_roles: list[int] = Field(default_factory=list)
    discord_blocked_roles: list[int] = Field(default_factory=list)
    discord_allowed_channels: list[int] = Field(default_factory=list)
    discord_blocked_channels: list[int] = Field(default_factory=list)
    discord_allowed_guilds: list[int] = Field(default_factory=list)
    discord_blocked_guilds: list[int] = Field(default_factory=list)
    discord_cooldown_seconds: float = Field(2.0, ge=0)
    discord_max_inflight: int | None = Field(
        None, ge=1, le=256, description="Generations running at once (empty: what the backend serves at once, e.g. parallel)."
    )
    discord_max_queue: int = Field(16, ge=0, le=10_000, description="Requests waiting beyond those; more get 'busy'.")
    discord_stream: bool = Field(False, description="Stream replies by editing the message (at most once a second).")
    discord_ping_author: bool = Field(False, description="Let the reply ping the author it replies to.")
    health_host: str = Field("0.0.0.0", description="Health/metrics server address.")
    health_port: int = Field(8080, ge=0, le=65535, description="Health/metrics port (0: pick a free one).")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"

    @field_validator("base_url", "discord_api_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("discord_gateway_url")
    @classmethod
    def _ws_url(cls, value: str | None) -> str | None:
        # Checked here too, not only at login: a typo should fail before the model loads.
        if value and not value.startswith(("ws://", "wss://")):
            raise ValueError("must start with ws:// or wss://")
        return value

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        return init_settings, env_settings, dotenv_settings, TomlSource(settings_cls, _config_path())

    # --- secrets -----------------------------------------------------------------------------------
    def secret(self, env_setting: str, *fallbacks: str) -> SecretStr | None:
        """The secret held by the env var that `env_setting` names (e.g. 'hf_token_env')."""
        for name in (getattr(self, env_setting), *fallbacks):
            value = os.environ.get(name)
            if value:
                return SecretStr(value)
        return None

    def resolved_db_path(self) -> Path:
        return self.db_path or default_data_dir() / "memory.db"


def _describe(error: dict) -> str:
    field = ".".join(str(p) for p in error.get("loc", ())) or "?"
    env = ENV_PREFIX + field.split(".")[0].upper()
    value = error.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"invalid setting '{field}' ({env} or charbot.toml){shown}: {error.get('msg', 'invalid')}"


def load_settings(**overrides: Any) -> Settings:
    """Build settings; any invalid value becomes a one-line ConfigError naming the setting."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(_describe(first), "fix the value or unset it to use the default") from None
    except SettingsError as exc:
        # A list/dict setting from the environment or .env that is not JSON never reaches validation.
        raise ConfigError(_describe_unparsed(str(exc)), "write it as JSON, e.g. [123, 456]") from None


def _describe_unparsed(message: str) -> str:
    found = re.search(r'field "([^"]+)" from source "(\w+)"', message)
    if not found:
        return f"invalid settings: {message}"
    field, source = found.groups()
    where = ".env" if source.startswith("DotEnv") else ENV_PREFIX + field.upper()
    return f"invalid setting '{field}' ({where}): not valid JSON for a list"
