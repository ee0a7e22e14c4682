"""One recipe for every character: `charbot train DATA -o OUT` with no tuning flags chooses the schedule from the
data and writes what it chose, and why, into the output's config."""

from __future__ import annotations

import json

import pytest

from charbot.dataset import Example
from charbot.train.config import TrainConfig
from charbot.train.recipe import choose


def examples(own: int, cast: int) -> list[Example]:
    line = [{"role": "user", "content": "Pip: Fog?"}, {"role": "assistant", "content": "Aye."}]
    return [Example(line, "ep", "Orla")] * own + [Example(line, "ep", "Pip")] * cast


def test_cast_data_gets_the_cast_first_then_the_character_named():
    cfg, why = choose(TrainConfig(), examples(400, 1100), "Orla")
    assert (cfg.cast_first, cfg.name_replies, cfg.epochs, cfg.character_epochs, cfg.learning_rate) == (True, True, 1.0, 2.0, 4e-5)
    assert set(why) == {"cast_first", "name_replies", "epochs", "character_epochs", "learning_rate"}
    assert "1,100 examples of other speakers" in why["cast_first"]


def test_the_characters_lines_alone_train_unnamed_in_one_phase():
    cfg, why = choose(TrainConfig(), examples(400, 0), "Orla")
    assert (cfg.cast_first, cfg.name_replies, cfg.epochs, cfg.learning_rate) == (False, False, 2.0, 5e-5)
    assert choose(TrainConfig(), examples(5000, 0), "Orla")[0].epochs == 1.0  # many examples: one pass


def test_settings_given_are_kept_and_not_explained():
    cfg, why = choose(TrainConfig(learning_rate=1e-3, cast_first=False, epochs=3.0), examples(400, 1100), "Orla")
    assert (cfg.learning_rate, cfg.cast_first, cfg.epochs, cfg.name_replies) == (1e-3, False, 3.0, True)
    assert "learning_rate" not in why and "cast_first" not in why and "name_replies" in why


@pytest.mark.torch
def test_train_with_no_tuning_flags_writes_the_chosen_recipe(tmp_path, capsys):
    pytest.importorskip("torch")
    from train_support import make_tiny_base

    from charbot.cli import main
    from charbot.factory import sample_script_path
    from charbot.prepare import prepare

    data = tmp_path / "data"
    prepare(sample_script_path(), "Orla", data, cast=1)
    base = make_tiny_base(tmp_path / "base")  # any --base-model, unchanged: the same command as for the embedded one
    with pytest.raises(SystemExit) as exc:
        main(["train", str(data), "-o", str(tmp_path / "out"), "--base-model", str(base), "--no-progress", "--threads", "1"])
    assert exc.value.code == 0
    config = json.loads((tmp_path / "out" / "training_config.json").read_text())
    assert (config["cast_first"], config["name_replies"], config["epochs"], config["character_epochs"], config["learning_rate"]) == (True, True, 1.0, 2.0, 4e-5)
    assert set(config["chosen_from_data"]) >= {"cast_first", "learning_rate"}
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [p["phase"] for p in metrics["phases"]] == ["cast", "character"] and "val_loss" in metrics
    assert "chosen from the data" in (tmp_path / "out" / "README.md").read_text()
