"""The groups of settings (memory, remote, discord, health, serve; generation is `GenerationSettings`), each a frozen
pydantic model. `config.Settings` holds one of each; every field also has a flat name (see config.py)."""

from __future__ import annotations

from pathlib import Path

from platformdirs import user_data_dir
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from charbot.memory import check_url


def default_data_dir() -> Path:
    return Path(user_data_dir("charbot", appauthor=False))


def _http_url(value: str | None) -> str | None:
    if value and not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return value


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MemorySettings(_Group):
    memory_url: str | None = Field(
        None, description="Where conversations are remembered: a SQLite file (path or sqlite:///path) or a PostgreSQL database shared "
        "by several bot processes (postgresql://user@host:5432/db; the password from PGPASSWORD or in the URL). Empty: db_path.",
    )
    memory_timeout: float = Field(
        5.0, gt=0, le=600, description="PostgreSQL: seconds a memory call waits for the database before the user is told to try again.",
    )
    db_path: Path | None = Field(None, description="SQLite memory file. Default: <user data dir>/memory.db.")
    retention_days: float | None = Field(None, gt=0, description="Forget messages older than this many days (empty: keep everything).")
    max_messages_per_conversation: int | None = Field(
        None, ge=2, le=10_000_000, description="Keep only this many newest messages per conversation (empty: no cap)."
    )
    prune_interval: float = Field(3600.0, gt=0, le=7 * 86400, description="Seconds between retention sweeps while serving.")

    _check_memory_url = field_validator("memory_url")(lambda value: check_url(value) if value else value)

    def resolved_db_path(self) -> Path:
        return self.db_path or default_data_dir() / "memory.db"

    def resolved_url(self) -> str:
        """memory_url, else the SQLite file db_path names (today's default)."""
        return self.memory_url or str(self.resolved_db_path())


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
    shard_count: int | None = Field(None, ge=1, description="Shards of the whole bot, all processes together (empty: Discord's advice, all here).")
    shard_ids: list[int] | None = Field(
        None, description="Shards this process runs, e.g. 0,1 (with shard_count; other processes run the rest). Direct messages reach shard 0 only."
    )
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
    # --- the cast: several characters in one bot, one model ---
    cast_dir: Path | None = Field(
        None, description="Directory of character cards (.json, .png, .charx) that speak in the channels as themselves, "
        "through a webhook, sharing one model.", json_schema_extra={"flat": "cast_dir"},
    )
    scene_turns: int = Field(2, ge=1, le=10, description="Character turns at most per message from a person (the first answer included).")
    talkativeness: float = Field(
        0.5, ge=0, le=1, description="How likely a character is to speak up when not named, for cards without extensions.talkativeness.",
    )
    avatar_urls: dict[str, str] = Field(
        default_factory=dict, description="Avatar picture URL per character name (wins over the card's own picture).",
    )
    character_models: dict[str, str] = Field(
        default_factory=dict, description="A model of its own per character name (what `model` takes, on the configured backend); "
        "characters naming the same model share one instance, the others share the bot's model.",
    )
    public_url: str | None = Field(
        None, description="Where Discord can reach this bot's health page (e.g. https://bot.example.com): cards' embedded "
        "pictures are served there under /avatars/ and used as the characters' avatars.",
    )

    _check_url = field_validator("api_url", "public_url")(_http_url)

    @field_validator("avatar_urls")
    @classmethod
    def _avatar_urls(cls, value: dict[str, str]) -> dict[str, str]:
        for name, url in value.items():
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"the avatar URL for {name!r} must start with http:// or https://")
        return value

    @field_validator("character_models")
    @classmethod
    def _models(cls, value: dict[str, str]) -> dict[str, str]:
        for name, model in value.items():
            if not model.strip():
                raise ValueError(f"the model for {name!r} is empty: give a GGUF file, a model directory or a hub id")
        return value

    @field_validator("gateway_url")
    @classmethod
    def _ws_url(cls, value: str | None) -> str | None:
        # Checked here too, not only at login: a typo should fail before the model loads.
        if value and not value.startswith(("ws://", "wss://")):
            raise ValueError("must start with ws:// or wss://")
        return value

    @field_validator("shard_ids", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        # --shard-ids 0,1 on the command line; JSON ([0, 1]) in the environment and TOML lists work too
        return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _shards(self) -> DiscordSettings:
        if self.shard_ids and self.shard_count is None:
            raise ValueError("discord_shard_ids is set without discord_shard_count (set CHARBOT_DISCORD_SHARD_COUNT too)")
        if self.shard_ids and self.shard_count is not None:
            outside = [i for i in self.shard_ids if not 0 <= i < self.shard_count]
            if outside or len(set(self.shard_ids)) != len(self.shard_ids):
                raise ValueError(f"discord_shard_ids must be distinct numbers from 0 to {self.shard_count - 1} (discord_shard_count {self.shard_count})")
        return self


class HealthSettings(_Group):
    host: str = Field("0.0.0.0", description="Address of the health/metrics page.")
    port: int = Field(8080, ge=0, le=65535, description="Port of the health/metrics page (0: pick a free one).")


class PromptCacheSettings(_Group):
    memory_bytes: int | None = Field(
        None, ge=0, description="Memory for saved prompt KV states (llama.cpp), so a conversation's next turn reads only its new "
        "tokens; empty: room for 20 full-length conversations of the model, at most a tenth of RAM; 0: off.", json_schema_extra={"flat": "prompt_cache_bytes"},
    )
    spill_dir: Path | None = Field(
        None, description="Folder for states evicted from memory (read back on a later turn); empty: they are dropped.",
        json_schema_extra={"flat": "prompt_cache_dir"},
    )
    spill_bytes: int = Field(4 << 30, ge=0, description="Disk for spilled states.", json_schema_extra={"flat": "prompt_cache_disk_bytes"})


class ServeSettings(_Group):
    host: str = Field("127.0.0.1", description="Address `charbot serve` listens on (loopback: this machine only).")
    port: int = Field(8000, ge=0, le=65535, description="Port of `charbot serve` (0: pick a free one).")
    api_key_env: str = Field("", description="Env var holding the API key clients must send (empty: no key asked).")
    max_inflight: int | None = Field(
        None, ge=1, le=256, description="Generations running at once (empty: what the backend serves at once, its `parallel`)."
    )
    max_queue: int = Field(16, ge=0, le=10_000, description="Requests waiting beyond those; more get 429.")
    max_body_bytes: int = Field(1_048_576, ge=1024, le=64 * 2**20, description="Largest request body accepted (bytes).")
    max_tokens: int = Field(512, ge=1, le=8192, description="Cap on a request's max_tokens (tokens generated per reply).")
