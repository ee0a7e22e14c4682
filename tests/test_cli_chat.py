"""`charbot chat` as a user runs it: a real process, the real embedded model, piped stdin."""

import os
import sqlite3
import subprocess
import sys

import pytest

from charbot.models import embedded_model_path


def run_chat(args, stdin, env_dir, extra_env=None, timeout=120):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARBOT_")}
    env.update({"CHARBOT_DB_PATH": str(env_dir / "memory.db"), "XDG_DATA_HOME": str(env_dir / "xdg"), "HF_HUB_OFFLINE": "1"})
    env.update(extra_env or {})
    return subprocess.run(
        [sys.executable, "-m", "charbot", "chat", *args], input=stdin, capture_output=True, text=True, env=env, cwd=env_dir, timeout=timeout
    )


@pytest.mark.model
def test_piped_chat_replies_in_character_and_remembers(tmp_path):
    # What the engine says when the model produced nothing usable: a reply equal to it was not generated.
    fallback = "FALLBACK-REPLY-SENTINEL-3c9a"
    # seeded: the same sampled replies on every run, so "several words" is a fact about them, not a coin toss
    out = run_chat(["--max-new-tokens", "32", "--seed", "7"], "Hello\nWho are you?\n", tmp_path, {"CHARBOT_FALLBACK_REPLY": fallback})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        name, _, reply = line.partition(": ")
        assert name == "Orla" and reply.strip() != fallback and len(reply.split()) >= 3, line  # generated words

    # a second process continues the same conversation
    again = run_chat(["--max-new-tokens", "16"], "And the weather?\n", tmp_path)
    assert again.returncode == 0, again.stderr
    db = sqlite3.connect(tmp_path / "memory.db")
    contents = [r[0] for r in db.execute("SELECT content FROM messages WHERE conversation_id='cli:cli' ORDER BY id")]
    assert contents[0::2] == ["Hello", "Who are you?", "And the weather?"]

    reset = run_chat([], "/reset\n", tmp_path)
    assert reset.stdout.strip() == "(forgot 6 messages)"


def one_line_error(result, *needles):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("charbot: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_missing_model_file(tmp_path):
    one_line_error(run_chat(["--model", str(tmp_path / "nope.gguf")], "hi\n", tmp_path), "nope.gguf", "not found")


def test_corrupt_model_files(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    one_line_error(run_chat(["--model", str(bad)], "hi\n", tmp_path), "bad.gguf", "not a GGUF")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(embedded_model_path().read_bytes()[:100_000])
    one_line_error(run_chat(["--model", str(cut)], "hi\n", tmp_path), "cut.gguf", "corrupt")


def test_malformed_persona(tmp_path):
    card = tmp_path / "card.json"
    card.write_text('{"spec": "chara_card_v2", "data": {"name": "A",}}')
    one_line_error(run_chat(["--persona", str(card)], "hi\n", tmp_path), "card.json:1:", "invalid JSON")


def test_unknown_backend(tmp_path):
    one_line_error(run_chat(["--backend", "gpt5"], "hi\n", tmp_path), "'backend'", "llamacpp")


def test_bad_setting_from_env(tmp_path):
    one_line_error(run_chat([], "hi\n", tmp_path, {"CHARBOT_TOP_P": "2"}), "'top_p'", "CHARBOT_TOP_P")


async def test_a_failed_reply_does_not_end_the_piped_chat(monkeypatch, capsys, store, sample_card):
    import io

    from conftest import ScriptedBackend

    from charbot.cli.chat import _piped
    from charbot.engine import Engine

    backend = ScriptedBackend(["Aye."])
    backend.fail_next = 1
    monkeypatch.setattr(sys, "stdin", io.StringIO("first\nsecond\n"))
    await _piped(Engine(backend, store, sample_card), "cli:test", verbose=False)
    out, err = capsys.readouterr()
    assert out.splitlines() == ["Orla: Aye."]
    assert err.splitlines() == ["charbot: error: scripted failure"]


@pytest.mark.model
def test_verbose_chat_says_what_each_reply_cost_and_reused(tmp_path):
    out = run_chat(["--max-new-tokens", "8", "--seed", "7", "--verbose"], "Hello\nWho are you?\n", tmp_path)
    assert out.returncode == 0, out.stderr
    reports = [line for line in out.stderr.splitlines() if line.startswith("(") and "prompt tokens reused" in line]
    assert len(reports) == 2 and len(out.stdout.splitlines()) == 2  # stdout stays one line per reply
    reused = [int(line.split("; ")[-1].split()[0]) for line in reports]
    assert reused[1] > reused[0] > 0  # the second turn's prompt starts with the whole first exchange
