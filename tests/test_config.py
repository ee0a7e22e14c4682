import pytest

from charbot.config import FLAT, load_settings, secret
from charbot.errors import ConfigError


def test_defaults(isolated_env):
    s = load_settings()
    assert s.backend == "auto" and s.model is None and s.generation.temperature == 0.8
    assert s.memory.resolved_db_path() == isolated_env / "memory.db"


def test_precedence_flags_env_dotenv_toml(isolated_env, monkeypatch):
    (isolated_env / "charbot.toml").write_text('top_k = 5\ntop_p = 0.5\ntemperature = 0.1\n[discord]\napi_url = "http://127.0.0.1:1/api"\n')
    (isolated_env / ".env").write_text("CHARBOT_TOP_P=0.6\nCHARBOT_TEMPERATURE=0.2\n")
    monkeypatch.setenv("CHARBOT_TEMPERATURE", "0.3")
    s = load_settings(top_k=None, max_new_tokens=9)
    g = s.generation
    assert (g.top_k, g.top_p, g.temperature, g.max_new_tokens) == (5, 0.6, 0.3, 9)
    assert s.discord.api_url == "http://127.0.0.1:1/api"  # [discord] api_url == discord_api_url


def test_bad_value_names_the_setting(isolated_env, monkeypatch):
    monkeypatch.setenv("CHARBOT_TEMPERATURE", "hot")
    with pytest.raises(ConfigError) as err:
        load_settings()
    msg = str(err.value)
    assert "'temperature'" in msg and "CHARBOT_TEMPERATURE" in msg and "\n" not in msg


def test_unknown_backend(isolated_env):
    with pytest.raises(ConfigError, match="'backend'"):
        load_settings(backend="gpt5")


def test_bad_toml(isolated_env):
    (isolated_env / "charbot.toml").write_text("top_k = = 3\n")
    with pytest.raises(ConfigError, match="charbot.toml: not valid TOML"):
        load_settings()
    (isolated_env / "charbot.toml").write_text("tmperature = 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'tmperature'"):
        load_settings()


def test_explicit_config_file_must_exist(isolated_env, monkeypatch):
    monkeypatch.setenv("CHARBOT_CONFIG", str(isolated_env / "nope.toml"))
    with pytest.raises(ConfigError, match="nope.toml: no such file"):
        load_settings()


def test_secrets_come_from_the_named_env_var(isolated_env, monkeypatch):
    monkeypatch.setenv("MY_BOT_TOKEN", "s3cr3t-token")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HUGGINGFACE_TOKEN", "hf_legacy")
    s = load_settings(discord_token_env="MY_BOT_TOKEN")
    token = secret(s.discord.token_env)
    assert token.get_secret_value() == "s3cr3t-token"
    assert "s3cr3t" not in repr(token) and "s3cr3t" not in repr(s)
    assert secret(s.remote.hf_token_env, "HUGGINGFACE_TOKEN").get_secret_value() == "hf_legacy"


def test_a_trained_models_persona_is_picked_up(isolated_env):
    from charbot.factory import default_persona_path, sample_card_path

    model = isolated_env / "rick-model"
    model.mkdir()
    assert default_persona_path(load_settings(model=str(model))) == sample_card_path()
    (model / "persona.json").write_text('{"name": "Rick"}')
    assert default_persona_path(load_settings(model=str(model))) == model / "persona.json"
    assert default_persona_path(load_settings(model=str(model / "model.gguf"))) == model / "persona.json"
    assert default_persona_path(load_settings(model=str(model), persona="x.json")).name == "x.json"


# One setting from each group, by its flat name, with a value other than its default and where it lands.
FLAT_CASES = [
    ("temperature", "0.25", ("generation", "temperature"), 0.25),
    ("db_path", "/tmp/x.db", ("memory", "db_path"), __import__("pathlib").Path("/tmp/x.db")),
    ("memory_url", "postgresql://bot@db:5432/charbot", ("memory", "memory_url"), "postgresql://bot@db:5432/charbot"),
    ("remote_timeout", "7", ("remote", "timeout"), 7.0),
    ("base_url", "http://127.0.0.1:9/v1", ("remote", "base_url"), "http://127.0.0.1:9/v1"),
    ("discord_chat_channels", "[1, 2]", ("discord", "chat_channels"), [1, 2]),
    ("health_port", "9099", ("health", "port"), 9099),
    ("context_window", "1024", ("context_window",), 1024),
]


def _get(settings, path):
    for part in path:
        settings = getattr(settings, part)
    return settings


@pytest.mark.parametrize("flat,raw,path,want", FLAT_CASES)
def test_every_source_uses_the_flat_names(isolated_env, monkeypatch, flat, raw, path, want):
    """Today's names keep working from every source: CHARBOT_<NAME>, a top-level TOML key, and a flag."""
    assert FLAT[flat] == path
    monkeypatch.setenv(f"CHARBOT_{flat.upper()}", raw)
    assert _get(load_settings(), path) == want
    monkeypatch.delenv(f"CHARBOT_{flat.upper()}")
    toml_value = raw if raw.startswith("[") or raw.replace(".", "").isdigit() else f'"{raw}"'
    (isolated_env / "charbot.toml").write_text(f"{flat} = {toml_value}\n")
    assert _get(load_settings(), path) == want
    (isolated_env / "charbot.toml").unlink()
    if not raw.startswith("["):
        assert _get(load_settings(**{flat: raw}), path) == want


def test_group_tables_in_toml(isolated_env):
    (isolated_env / "charbot.toml").write_text('[remote]\ntimeout = 3\n[generation]\ntop_k = 7\n[health]\nport = 1234\n')
    s = load_settings()
    assert (s.remote.timeout, s.generation.top_k, s.health.port) == (3.0, 7, 1234)
    (isolated_env / "charbot.toml").write_text('[discord]\nchat_chanels = [1]\n')
    with pytest.raises(ConfigError, match=r"unknown setting 'chat_chanels' in \[discord\]"):
        load_settings()


def test_flags_are_validated_like_every_other_source(isolated_env):
    with pytest.raises(ConfigError) as err:
        load_settings(max_new_tokens="lots")
    assert "'max_new_tokens' (--max-new-tokens)" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="'health_port'"):
        load_settings(health_port="70000")


def test_config_file_is_passed_not_written_to_the_environment(isolated_env):
    import os

    cfg = isolated_env / "other.toml"
    cfg.write_text("top_k = 11\n")
    assert load_settings(cfg).generation.top_k == 11
    assert "CHARBOT_CONFIG" not in os.environ
    with pytest.raises(ConfigError, match="--config .*nope.toml: no such file"):
        load_settings(isolated_env / "nope.toml")


def test_serve_settings_have_flat_names_like_every_group(isolated_env, monkeypatch):
    (isolated_env / "charbot.toml").write_text('[serve]\nmax_queue = 3\napi_key_env = "MY_SERVE_KEY"\n')
    monkeypatch.setenv("CHARBOT_SERVE_PORT", "8123")
    s = load_settings(serve_host="0.0.0.0", serve_max_tokens=None)
    assert (s.serve.host, s.serve.port, s.serve.max_queue, s.serve.api_key_env) == ("0.0.0.0", 8123, 3, "MY_SERVE_KEY")
    assert (load_settings().serve.host, load_settings().serve.max_tokens) == ("127.0.0.1", 512)  # loopback by default
    with pytest.raises(ConfigError, match="'serve_max_body_bytes'.*--serve-max-body-bytes"):
        load_settings(serve_max_body_bytes=10)


def test_shard_ids_from_the_command_line_are_comma_separated_and_within_the_count(isolated_env):
    assert load_settings(discord_shard_ids="2,3", discord_shard_count="4").discord.shard_ids == [2, 3]
    with pytest.raises(ConfigError, match="discord_shard_ids must be distinct numbers from 0 to 3"):
        load_settings(discord_shard_ids="3,4", discord_shard_count="4")


def test_a_memory_url_password_is_never_echoed(isolated_env):
    with pytest.raises(ConfigError) as caught:
        load_settings(memory_url="redis://bot:hunter2@db/0")
    assert "memory_url" in str(caught.value) and "hunter2" not in str(caught.value) and "bot:***@db" in str(caught.value)
