import pytest

from charbot.config import load_settings
from charbot.errors import ConfigError


def test_defaults(isolated_env):
    s = load_settings()
    assert s.backend == "auto" and s.model is None and s.temperature == 0.8
    assert s.resolved_db_path() == isolated_env / "memory.db"


def test_precedence_flags_env_dotenv_toml(isolated_env, monkeypatch):
    (isolated_env / "charbot.toml").write_text('top_k = 5\ntop_p = 0.5\ntemperature = 0.1\n[discord]\napi_url = "http://127.0.0.1:1/api"\n')
    (isolated_env / ".env").write_text("CHARBOT_TOP_P=0.6\nCHARBOT_TEMPERATURE=0.2\n")
    monkeypatch.setenv("CHARBOT_TEMPERATURE", "0.3")
    s = load_settings(top_k=None, max_new_tokens=9)
    assert (s.top_k, s.top_p, s.temperature, s.max_new_tokens) == (5, 0.6, 0.3, 9)
    assert s.discord_api_url == "http://127.0.0.1:1/api"  # [discord] api_url == discord_api_url


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
    token = s.secret("discord_token_env")
    assert token.get_secret_value() == "s3cr3t-token"
    assert "s3cr3t" not in repr(token) and "s3cr3t" not in repr(s)
    assert s.secret("hf_token_env", "HUGGINGFACE_TOKEN").get_secret_value() == "hf_legacy"


def test_a_trained_models_persona_is_picked_up(isolated_env):
    from charbot.factory import default_persona_path, sample_card_path

    model = isolated_env / "rick-model"
    model.mkdir()
    assert default_persona_path(load_settings(model=str(model))) == sample_card_path()
    (model / "persona.json").write_text('{"name": "Rick"}')
    assert default_persona_path(load_settings(model=str(model))) == model / "persona.json"
    assert default_persona_path(load_settings(model=str(model / "model.gguf"))) == model / "persona.json"
    assert default_persona_path(load_settings(model=str(model), persona="x.json")).name == "x.json"
