"""`prepare`'s three splits (train / val / test) by whole units: episodes, else scenes, else contiguous blocks.

The scripts here are the shipped sample's own lines, regrouped into more episodes or into scenes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from charbot.factory import sample_script_path
from charbot.prepare import prepare

SPLITS = ("train", "val", "test")


def sample() -> list[dict]:
    with sample_script_path().open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    return path


def records(out: Path) -> dict[str, list[dict]]:
    return {s: [json.loads(line) for line in (out / f"{s}.jsonl").read_text(encoding="utf-8").splitlines()] for s in SPLITS}


def texts(recs: list[dict]) -> set[str]:
    """Every line anywhere in the examples: replies and context alike."""
    return {part.partition(": ")[2] or part for r in recs for m in r["messages"][1:] for part in m["content"].split("\n")}


def test_enough_episodes_split_three_ways_by_whole_episodes(tmp_path):
    # each sample episode cut into four: 16 episodes, enough for a val and a test split of whole episodes
    rows = [[f"{r['episode']} part {i * 4 // 45}", r["name"], r["line"]] for i, r in enumerate(sample())]
    script = write(tmp_path / "many.csv", ["episode", "name", "line"], rows)
    res = prepare(script, "Orla", tmp_path / "a")
    assert res.report.split_unit == "episode" and res.report.split_by == "whole episodes"
    recs = records(tmp_path / "a")
    episodes = {s: {r["episode"] for r in recs[s]} for s in SPLITS}
    assert all(episodes.values())
    assert not episodes["train"] & episodes["val"] and not episodes["train"] & episodes["test"] and not episodes["val"] & episodes["test"]
    assert {s: len(e) for s, e in episodes.items()} == res.report.units_split == res.report.episodes_split
    assert sorted(episodes["test"]) == res.report.held_out["test"]
    prepare(script, "Orla", tmp_path / "b")
    for s in SPLITS:
        assert (tmp_path / "a" / f"{s}.jsonl").read_bytes() == (tmp_path / "b" / f"{s}.jsonl").read_bytes()
    # the validation episodes are those of a run without a test split: what was tuned on is not the test
    prepare(script, "Orla", tmp_path / "c", test_fraction=0)
    assert (tmp_path / "a" / "val.jsonl").read_bytes() == (tmp_path / "c" / "val.jsonl").read_bytes()


def test_three_films_with_scene_marks_split_by_whole_scenes(tmp_path):
    # three "films" (too few to hold out whole ones), each in scenes of six lines
    rows = [[r["episode"] if not r["episode"].startswith("4") else "3 The Inspection", str(i // 6), r["name"], r["line"]]
            for i, r in enumerate(sample())]
    res = prepare(write(tmp_path / "films.csv", ["movie", "scene", "name", "line"], rows), "Orla", tmp_path / "o")
    assert res.report.split_unit == "scene" and "too few episodes" in res.report.split_by
    recs = records(tmp_path / "o")
    scenes = {s: {r["episode"] for r in recs[s]} for s in SPLITS}  # "film | scene": the record's conversation key
    assert all(scenes.values()) and not scenes["train"] & (scenes["val"] | scenes["test"]) and not scenes["val"] & scenes["test"]
    films = {s: {e.split(" | ")[0] for e in scenes[s]} for s in SPLITS}
    assert films["train"] & films["test"]  # whole scenes, not whole films: that is the fallback


def test_empty_rows_are_scenes_without_an_episode_column(tmp_path):
    rows = []
    for i, r in enumerate(sample()):
        rows += [["", ""]] * (i % 8 == 0 and i > 0) + [[r["name"], r["line"]]]
    res = prepare(write(tmp_path / "kaggle.csv", ["raw_character_text", "spoken_words"], rows), "Orla", tmp_path / "o")
    assert res.report.split_unit == "scene" and all(res.report.units_split.values())


def test_one_script_without_marks_splits_in_blocks_and_no_held_out_line_is_trained_on(tmp_path):
    res = prepare(sample_script_path(), "Orla", tmp_path / "o", cast=1)  # four episodes: too few for 0.1 + 0.1
    assert res.report.split_unit == "block" and "20 contiguous blocks" in res.report.split_by
    assert all(res.report.units_split.values()) and sum(res.report.units_split.values()) == 20
    recs = records(tmp_path / "o")
    held_out = {r["messages"][-1]["content"] for s in ("val", "test") for r in recs[s]}
    # Neither as a reply nor as context of a training example (of Orla's or of the cast's) next to its block.
    assert held_out and not held_out & texts(recs["train"])
    assert {r["speaker"] for r in recs["train"]} > {"Orla"}
    # blocks are contiguous: between two rows of one held-out block, no training reply of Orla's
    train_rows = sorted(r["source_line"] for r in recs["train"] if r["speaker"] == "Orla")
    for s in ("val", "test"):
        rows = sorted(r["source_line"] for r in recs[s])
        runs = sum(1 for a, b in zip(rows, rows[1:]) if any(a < t < b for t in train_rows)) + 1
        assert runs <= res.report.units_split[s]


def test_without_the_cut_a_block_would_leak(tmp_path):
    """The check above can fail: a split by single lines would put held-out replies in training contexts."""
    from charbot.prepare import splits

    res = prepare(sample_script_path(), "Orla", tmp_path / "o")
    assert res.report.split_unit == "block"
    original = splits.Units.place
    try:
        splits.Units.place = lambda self, spooled: (self.splits(self.of(spooled.where)), spooled)  # no context cut
        prepare(sample_script_path(), "Orla", tmp_path / "leaky")
    finally:
        splits.Units.place = original
    recs = records(tmp_path / "leaky")
    held_out = {r["messages"][-1]["content"] for s in ("val", "test") for r in recs[s]}
    assert held_out & texts(recs["train"])


def test_fractions_that_leave_nothing_to_train_are_refused(tmp_path, capsys):
    from charbot.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["prepare", str(sample_script_path()), "-c", "Orla", "-o", str(tmp_path / "o"), "--val-fraction", "0.5", "--test-fraction", "0.5", "-q"])
    err = capsys.readouterr().err
    assert exc.value.code != 0 and "leave nothing to train on" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
