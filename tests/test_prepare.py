"""`charbot prepare` on the shipped sample script and on small files in the shapes real exports come in."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from charbot.factory import sample_script_path
from charbot.persona import example_dialogues, load_card
from charbot.prepare import ScriptError, prepare
from charbot.prepare.clean import clean_line, normalize_speaker, parse_aliases
from charbot.prepare.detect import Dialect
from charbot.prepare.pipeline import CUT_CONTEXT
from charbot.prepare.splits import Splits, val_score
from charbot.prepare.readers import iter_rows, open_script, quote_left_open


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def sample_rows() -> list[tuple[str, str, str]]:
    with sample_script_path().open(encoding="utf-8", newline="") as fh:
        return [(r["episode"], normalize_speaker(r["name"]), clean_line(r["line"])) for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def orla(tmp_path_factory):
    out = tmp_path_factory.mktemp("orla")
    return prepare(sample_script_path(), "Orla", out, wide_csv=True)


def test_sample_script_is_original_mini_series():
    rows = sample_rows()
    assert len(rows) >= 170
    assert len({e for e, _, _ in rows}) == 4
    assert {s for _, s, _ in rows} == {"Orla", "Pip", "Dr. Hollis", "Mayor Grubb", "Tamsin"}


def test_orla_variants_merge_and_directions_go(orla):
    rep = orla.report
    assert rep.character == "Orla"
    assert rep.character_rows_raw == rep.character_lines == 84  # includes the "ORLA " row
    assert rep.directions_removed >= 2
    for split in ("train", "val", "test"):
        for rec in read_jsonl(orla.out_dir / f"{split}.jsonl"):
            for m in rec["messages"]:
                assert "(sighs)" not in m["content"] and "(groans)" not in m["content"]


def test_examples_never_cross_episodes(orla):
    by_episode: dict[str, set[str]] = {}
    for episode, speaker, text in sample_rows():
        by_episode.setdefault(episode, set()).update({f"{speaker}: {text}", text})
    records = [r for split in ("train", "val", "test") for r in read_jsonl(orla.out_dir / f"{split}.jsonl")]
    assert len(records) == sum(orla.report.examples.values()) > 60
    for rec in records:
        own = by_episode[rec["episode"]]
        for m in rec["messages"][1:]:
            for part in m["content"].split("\n"):
                assert part in own, f"{part!r} is not from episode {rec['episode']!r}"


def test_messages_alternate_and_end_with_the_line(orla):
    for rec in read_jsonl(orla.out_dir / "train.jsonl"):
        roles = [m["role"] for m in rec["messages"]]
        assert roles[0] == "system" and roles[1] == "user" and roles[-1] == "assistant"
        assert all(a != b for a, b in zip(roles[1:], roles[2:]))
        assert rec["speaker"] == "Orla"
        assert "You are Orla" in rec["messages"][0]["content"]
        assert len(roles) - 1 <= 7 + 1  # at most --context lines before the reply


def test_context_window_is_respected(tmp_path):
    res = prepare(sample_script_path(), "Orla", tmp_path / "o", context=1)
    for rec in read_jsonl(tmp_path / "o" / "train.jsonl"):
        assert [m["role"] for m in rec["messages"]] == ["system", "user", "assistant"]
    assert res.report.context == 1


def test_split_by_episode_is_deterministic_and_disjoint(orla, tmp_path):
    # --test-fraction 0: the two splits of old, by whole episodes (four are enough for one held-out split)
    prepare(sample_script_path(), "Orla", tmp_path / "one", test_fraction=0)
    prepare(sample_script_path(), "Orla", tmp_path / "two", test_fraction=0)
    for name in ("train.jsonl", "val.jsonl", "test.jsonl"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    train = {r["episode"] for r in read_jsonl(tmp_path / "one" / "train.jsonl")}
    val = {r["episode"] for r in read_jsonl(tmp_path / "one" / "val.jsonl")}
    assert train and val and not train & val
    assert len(train | val) == 4 and (tmp_path / "one" / "test.jsonl").read_text() == ""


def test_both_splits_non_empty_even_with_tiny_fraction(tmp_path):
    res = prepare(sample_script_path(), "Orla", tmp_path / "o", val_fraction=0.0001, test_fraction=0)
    assert res.report.examples["val"] > 0 and res.report.examples["train"] > 0
    res = prepare(sample_script_path(), "Orla", tmp_path / "z", val_fraction=0.0, test_fraction=0)
    assert res.report.examples["val"] == 0
    res = prepare(sample_script_path(), "Orla", tmp_path / "n", val_fraction=0.9999, test_fraction=0)
    assert res.report.examples["val"] > 0 and res.report.examples["train"] > 0
    assert res.report.units_split == {"train": 1, "val": 3, "test": 0} and res.report.split_unit == "episode"


def test_splits_are_decided_once_with_the_repair():
    episodes = [f"ep {i}" for i in range(6)]
    by_score = sorted(episodes, key=val_score)
    tiny = Splits(episodes, 1e-9)  # nothing scores that low: the lowest-scoring episode is held out anyway
    assert tiny.units("val") == [by_score[0]] and tiny("not seen") == "train"
    huge = Splits(episodes, 0.999999)
    assert huge.units("train") == [by_score[-1]] and huge("not seen") == "val"
    assert Splits(episodes, 0.0).units("val") == []
    assert Splits(["only"], 0.999999, 0.0).of == {"only": "train"}


def test_test_split_leaves_the_validation_units_where_they_were():
    episodes = [f"ep {i}" for i in range(40)]
    before = Splits(episodes, 0.15)
    after = Splits(episodes, 0.15, 0.15)
    assert after.units("val") == before.units("val") and after.units("test")
    assert set(after.units("test")) <= set(before.units("train"))  # the new test units were training units
    for n in (2, 3, 5):  # too few for every split: train first, then test, then val
        few = Splits(episodes[:n], 1e-9, 1e-9)
        assert {s: len(few.units(s)) for s in ("train", "val", "test")} == {"train": n - 1 - (n > 2), "val": int(n > 2), "test": 1}
    assert Splits(episodes[:2], 0.0, 0.999).units("test") and Splits(episodes[:2], 0.0, 0.999).units("train")


def test_card_is_valid_and_built_from_real_lines(orla):
    card = load_card(orla.out_dir / "persona.json")
    assert card.name == "Orla"
    real = {text for _, _, text in sample_rows()}
    assert card.data.first_mes in real
    blocks = example_dialogues(card)
    assert len(blocks) == 4
    for block in blocks:
        assert [t.speaker for t in block] == ["{{user}}", "{{char}}"]
        assert block[0].text in real and block[1].text in real
        assert len(block[1].text.split()) >= 6  # several words, not an interjection
    assert "174 rows read" in card.data.creator_notes


def test_existing_card_is_kept_unless_force(orla, tmp_path):
    out = tmp_path / "o"
    prepare(sample_script_path(), "Orla", out)
    card = json.loads((out / "persona.json").read_text())
    card["data"]["description"] = "Edited by hand."
    (out / "persona.json").write_text(json.dumps(card))
    res = prepare(sample_script_path(), "Orla", out)
    assert load_card(out / "persona.json").data.description == "Edited by hand."
    assert "Edited by hand." in read_jsonl(out / "train.jsonl")[0]["messages"][0]["content"]
    assert "kept" in res.report.card
    prepare(sample_script_path(), "Orla", out, force=True)
    assert load_card(out / "persona.json").data.description != "Edited by hand."


def test_report_json_and_wide_csv(orla):
    report = json.loads((orla.out_dir / "report.json").read_text())
    assert report["rows_read"] == 174 and report["character_lines"] == 84
    assert report["top_speakers"][0] == {"name": "Orla", "lines": 84}
    assert report["approx_tokens"]["train"] > 0
    with (orla.out_dir / "wide.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["response", "context", *(f"context/{i}" for i in range(6))]
    assert len(rows) - 1 == sum(report["examples"].values()) + report["skipped"].get(CUT_CONTEXT, 0)
    assert not list(orla.out_dir.glob(".*tmp"))


def test_alias_merges_speakers(tmp_path):
    script = tmp_path / "s.csv"
    script.write_text("episode,name,line\n1,Pip,Hello there.\n1,Cap'n Orla,Aye.\n1,Pip,Tea?\n1,Orla,Always.\n", encoding="utf-8")
    res = prepare(script, "Orla", tmp_path / "o", aliases=["Cap'n Orla=Orla"])
    assert res.report.character_lines == 2 and sum(res.report.examples.values()) == 2
    res = prepare(script, "Orla", tmp_path / "o2")
    assert res.report.character_lines == 1


def test_parse_aliases_chains_and_case():
    assert parse_aliases(["pickle rick=Rick Sanchez", "Rick Sanchez=Rick"]) == {"pickle rick": "Rick", "rick sanchez": "Rick"}


def test_speaker_normalisation():
    assert normalize_speaker("  FRODO ") == normalize_speaker("\xa0FRODO") == normalize_speaker("(FRODO") == "Frodo"
    assert normalize_speaker("DR. HOLLIS") == "Dr. Hollis"
    assert clean_line("(He sighs.) Fine. [beat] Go.") == "Fine. Go."
    assert clean_line("SeÃ±or Burns") == "Señor Burns"


def test_r_write_table_with_escaped_quote_crlf(tmp_path):
    script = tmp_path / "sw.txt"
    script.write_bytes(
        b'"character" "dialogue"\r\n"1" "LUKE" "Hurry up!"\r\n"2" "HAN" "He said \\"no\\", kid."\r\n"3" "LUKE" "Fine."'
    )
    src = open_script(script)
    rows = list(iter_rows(src))
    assert [(r.speaker, r.text) for r in rows] == [("LUKE", "Hurry up!"), ("HAN", 'He said "no", kid.'), ("LUKE", "Fine.")]
    res = prepare(script, "luke", tmp_path / "o")
    assert res.report.examples == {"train": 1, "val": 0, "test": 0}  # one example: everything trains


def test_reading_rows_leaves_csv_field_limit_alone(tmp_path):
    script = tmp_path / "s.csv"
    script.write_text("name,line\nAnn,Hi.\nBo,Hey.\n")
    limit = csv.field_size_limit()
    rows = iter_rows(open_script(script))
    next(rows)
    assert csv.field_size_limit() == limit  # also while the generator is suspended
    list(rows)
    assert csv.field_size_limit() == limit


COMMA = Dialect("utf-8", ",", None, True, False)
R_TABLE = Dialect("utf-8", " ", "\\", False, False)


@pytest.mark.parametrize(("dialect", "record", "left_open"), [
    (COMMA, 'Pip,"never closed\nOrla,Aye.\n', True),
    (COMMA, 'Pip,"a ""quoted"" word\nOrla,Aye.\n', True),
    (COMMA, 'Pip,"spans\ntwo lines",x\nOrla,"open\n', False),  # only the record on the given line counts
    (COMMA, 'Pip,say "hi\nOrla,Aye.\n', False),  # a quote inside an unquoted field is text
    (COMMA, 'Pip,"closed"then text\nOrla,"open\n', False),  # csv rejects the text after the quote first
    (COMMA, '"Pip","closed",x\n', False),
    (R_TABLE, '"1" "Pip" "an \\" escaped quote\n', True),
    (R_TABLE, '"1" "Pip" "ends with \\\\"\n', False),  # an escaped backslash, then the closing quote
    (R_TABLE, '"1" "Pip" "an escaped \\\nnewline"\n', False),
    (R_TABLE, '1 Pip escaped\\\n"is text mid-field\n', False),
    (R_TABLE, '1 Pip escaped\\\n "opens the next field\n', True),
])
def test_quote_left_open_follows_csv_rules(tmp_path, dialect, record, left_open):
    script = tmp_path / "s.csv"
    script.write_text("header\n" + record, newline="")
    assert quote_left_open(script, dialect, 2) is left_open


def test_tsv_bom_and_cp1252(tmp_path):
    tsv = tmp_path / "s.tsv"
    tsv.write_bytes("\ufeffcharacter\tdialogue\r\nAnn\tHi, you.\r\nBo\tHey.\r\n".encode("utf-8"))
    assert [(r.speaker, r.text) for r in iter_rows(open_script(tsv))] == [("Ann", "Hi, you."), ("Bo", "Hey.")]
    legacy = tmp_path / "legacy.csv"
    legacy.write_bytes("speaker,line_text\nJosé,\u201cCafé\u201d please\nAnn,Sí\n".encode("cp1252"))
    src = open_script(legacy)
    assert src.dialect.encoding == "cp1252"
    assert [r.text for r in iter_rows(src)] == ["\u201cCafé\u201d please", "Sí"]


def test_kaggle_shapes_detected(tmp_path):
    shapes = {
        "char,dialog,movie": ("char", "dialog", ("movie",)),
        "raw_character_text,spoken_words": ("raw_character_text", "spoken_words", ()),
        "index,season no.,episode no.,episode name,name,line": ("name", "line", ("season no.", "episode name")),
        "Speaker,Line_Text,Scene": ("Speaker", "Line_Text", ("Scene",)),
    }
    for header, (spk, line, ep) in shapes.items():
        f = tmp_path / "h.csv"
        width = header.count(",") + 1
        f.write_text(header + "\n" + ",".join(["x"] * width) + "\n")
        cols = open_script(f).columns
        assert (cols.names[cols.speaker], cols.names[cols.line]) == (spk, line)
        assert tuple(cols.names[i] for i in cols.episode) == ep


def test_explicit_columns(tmp_path):
    f = tmp_path / "odd.csv"
    f.write_text("who_said,what,ep\nAnn,Hello.,1\nBo,Hi Ann.,1\n")
    res = prepare(f, "Bo", tmp_path / "o", speaker_col="who_said", line_col="2", episode_col="ep")
    assert sum(res.report.examples.values()) == 1


def test_unknown_character_suggests_close_name(tmp_path):
    with pytest.raises(ScriptError, match=r"no speaker 'Orlaa'; did you mean Orla \(84 lines\)\?"):
        prepare(sample_script_path(), "Orlaa", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_empty_rows_split_scenes_without_episode_column(tmp_path):
    f = tmp_path / "s.csv"
    f.write_text("raw_character_text,dialogue\nAnn,Hello.\nBo,Hi.\n,\nBo,New scene.\nAnn,Yes.\n")
    res = prepare(f, "Bo", tmp_path / "o", val_fraction=0, test_fraction=0)
    assert res.report.dropped == {"empty row": 1}
    assert res.report.examples["train"] == 1  # "New scene." opens a scene: nothing before it to answer
    assert res.report.skipped


def test_kaggle_without_credentials_says_what_to_set(monkeypatch, tmp_path):
    from charbot.prepare.kaggle import download

    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path))
    with pytest.raises(ScriptError, match="KAGGLE_USERNAME and KAGGLE_KEY.*kaggle.json"):
        download("andradaolteanu/rickmorty-scripts")


def test_mojibake_repaired_and_counted(tmp_path):
    f = tmp_path / "s.csv"
    f.write_text("raw_character_text,dialogue\nBurns,Leave.\nBart,\"Farewell, SeÃ±or Burns!\"\nMICHAEL,Hi.\nMichael,Bye.\nBart,Ok.\n", encoding="utf-8")
    res = prepare(f, "Bart", tmp_path / "o", val_fraction=0, test_fraction=0)
    assert res.report.text_repaired == 1
    assert dict(res.report.top_speakers)["Michael"] == 2
    text = (tmp_path / "o" / "train.jsonl").read_text(encoding="utf-8")
    assert "Farewell, Señor Burns!" in text and "Ã" not in text


def test_progress_bar_path_runs(tmp_path, monkeypatch):
    from charbot.prepare import pipeline

    monkeypatch.setattr(pipeline, "PROGRESS_MIN_BYTES", 0)
    res = prepare(sample_script_path(), "Orla", tmp_path / "o", show_progress=True)
    assert res.report.rows_read == 174


def test_cli_writes_outputs_and_summary(tmp_path):
    from click.testing import CliRunner

    from charbot.cli import cli

    result = CliRunner().invoke(cli, ["prepare", str(sample_script_path()), "-c", "orla", "--out", str(tmp_path / "o"), "--wide-csv"])
    assert result.exit_code == 0, result.output
    assert "Orla's lines" in result.output and "84 kept of 84 rows" in result.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["persona.json", "report.json", "test.jsonl", "train.jsonl", "val.jsonl", "wide.csv"]
    assert "split by" in result.output and "contiguous blocks" in result.output


def test_prepare_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, charbot.prepare, charbot.cli.prepare; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize("val_fraction", [0.1, 0.0001])  # 0.0001: the val episode is moved there after the pass
def test_cast_adds_other_speakers_to_train_only(tmp_path, val_fraction):
    plain = prepare(sample_script_path(), "Orla", tmp_path / "plain", val_fraction=val_fraction, test_fraction=0)
    res = prepare(sample_script_path(), "Orla", tmp_path / "cast", val_fraction=val_fraction, test_fraction=0, cast=1)
    assert (tmp_path / "cast" / "val.jsonl").read_bytes() == (tmp_path / "plain" / "val.jsonl").read_bytes()
    train = read_jsonl(tmp_path / "cast" / "train.jsonl")
    own = [r for r in train if r["speaker"] == "Orla"]
    assert own == read_jsonl(tmp_path / "plain" / "train.jsonl")
    cast = [r for r in train if r["speaker"] != "Orla"]
    val_episodes = {r["episode"] for r in read_jsonl(tmp_path / "cast" / "val.jsonl")}
    assert val_episodes and not {r["episode"] for r in cast} & val_episodes  # nothing held out is trained on
    assert {r["speaker"] for r in cast} == {"Pip", "Dr. Hollis", "Mayor Grubb", "Tamsin"}
    for r in cast:  # each speaker is the character of its own examples
        assert r["messages"][0]["content"].startswith(f"You are {r['speaker']}.")
        assert r["messages"][-1]["role"] == "assistant" and f"{r['speaker']}: " not in r["messages"][-1]["content"]
    assert res.report.cast["examples"] == len(cast) > len(own)
    assert res.report.cast["speakers"] == 4 and plain.report.cast == {}
    assert sorted(p.name for p in (tmp_path / "cast").iterdir()) == ["cards", "persona.json", "report.json", "test.jsonl", "train.jsonl", "val.jsonl"]
    assert sorted(p.name for p in (tmp_path / "cast" / "cards").iterdir()) == ["dr-hollis.json", "mayor-grubb.json", "pip.json", "tamsin.json"]


def test_cast_minimum_lines_filters_speakers(tmp_path):
    lines = {}
    for _, speaker, _ in sample_rows():
        lines[speaker] = lines.get(speaker, 0) + 1
    cutoff = sorted(n for s, n in lines.items() if s != "Orla")[-1]  # only the busiest other speaker qualifies
    res = prepare(sample_script_path(), "Orla", tmp_path / "o", cast=cutoff)
    busiest = max((s for s in lines if s != "Orla"), key=lines.get)
    cast = [r for r in read_jsonl(tmp_path / "o" / "train.jsonl") if r["speaker"] != "Orla"]
    assert {r["speaker"] for r in cast} == {busiest} and res.report.cast["speakers"] == 1
