"""The rich card `prepare` drafts offline from the sample script: description, measured personality, real
exchanges, greetings from scene openings, a lorebook of recurring names; cast cards; `--draft-with`."""

from __future__ import annotations

import json
import re

import pytest

from charbot.factory import sample_script_path
from charbot.lore_scan import scan
from charbot.persona import example_dialogues, load_card, render
from charbot.prepare import prepare
from charbot.prepare.card import stub_card
from charbot.prepare.style import stutters
from conftest import ScriptedBackend
from test_prepare import sample_rows as script_rows


@pytest.fixture(scope="module")
def drafted(tmp_path_factory):
    out = tmp_path_factory.mktemp("orla")
    result = prepare(sample_script_path(), "Orla", out, cast=1, test_fraction=0)  # one held-out episode (the sample has 4: too few to hold out two)
    val = {json.loads(line)["episode"] for line in (out / "val.jsonl").read_text().splitlines()}
    return result, out, val


def train_lines(val: set[str]) -> dict[str, str]:
    """Every line of the training episodes → its episode."""
    return {text: episode for episode, _, text in script_rows() if episode not in val}


def test_description_and_personality_are_measured(drafted):
    result, _, _ = drafted
    d = result.card.data
    assert result.card.spec == "chara_card_v3"
    assert d.description.startswith("Orla is a character in sample script, in 3 episodes of the script")
    assert "Orla talks most with Pip (" in d.description and "talks most often about Gerald" in d.description
    assert d.personality.startswith("Orla rarely asks questions") and "rarely exclaims" in d.personality
    assert "Favourite words and phrases: “sprat”" in d.personality
    assert "Measured against the rest of the cast: questions in 11% of lines, the cast 18%" in d.creator_notes  # the figures
    traits = d.extensions["charbot"]["traits"]
    assert traits["lines"] > 40 and 0 <= traits["exclamations"] < d.extensions["charbot"]["cast_traits"]["exclamations"]


def test_examples_and_greetings_are_real_lines_of_several_words_from_training_episodes(drafted):
    result, _, val = drafted
    d = result.card.data
    real = train_lines(val)
    blocks = example_dialogues(result.card)
    assert len(blocks) == 4 and len({real[b[1].text] for b in blocks}) == 3  # one per training episode first
    for block in blocks:
        prompt, reply = block[0].text, block[1].text
        assert prompt in real and reply in real and real[prompt] == real[reply]
        assert len(reply.split()) >= 6 and len(set(reply.lower().split())) >= 5
    greetings = [d.first_mes, *d.alternate_greetings]
    assert len(greetings) == 3 and all(g in real for g in greetings)
    openers = {}
    for episode, speaker, text in script_rows():
        openers.setdefault((episode, speaker), text)
    assert all(openers[(real[g], "Orla")] == g for g in greetings)  # each is Orla's first line in its episode


def test_lorebook_holds_recurring_names_with_real_lines(drafted):
    result, _, val = drafted
    book = result.card.book
    real = train_lines(val)
    by_key = {e.keys[0]: e for e in book.entries}
    assert {"Gerald", "Teeth", "Pip", "Tamsin"} <= set(by_key) and "Orla" not in by_key  # not the character herself
    for entry in book.entries:
        quoted = re.findall(r"(\S[^“]*) says: “([^”]*)”", entry.content)
        assert quoted and all(real[line] for _, line in quoted) and entry.extensions["charbot"]["episodes"] >= 2
        named = {ep for ep, _, text in script_rows() if ep not in val and any(k in text for k in entry.keys)}
        assert len(named) >= 2  # named in more than one training episode
    assert "a wooden leg called Gerald" in by_key["Gerald"].content  # a line that says what it is
    assert sum(len(e.content.split()) for e in book.entries) <= 450
    fired = scan([("card", book)], ["How is gerald today?"]).fired
    assert [a.label for a in fired] == ["Gerald"]


def test_with_block_splits_no_held_out_line_reaches_the_card(tmp_path):
    # the sample's 4 episodes are too few to hold out two splits of episodes: it is cut in blocks, and the
    # card is drafted from the training blocks only
    result = prepare(sample_script_path(), "Orla", tmp_path / "blocks", cast=1)
    assert result.report.split_unit == "block"
    held_out = {json.loads(line)["messages"][-1]["content"] for split in ("val", "test")
                for line in (tmp_path / "blocks" / f"{split}.jsonl").read_text().splitlines()}
    assert held_out
    card = result.card.data
    quoted = [line for _, line in re.findall(r"(\S[^“]*) says: “([^”]*)”", "\n".join(e.content for e in card.character_book.entries))]
    examples = [turn.text for block in example_dialogues(result.card) for turn in block]
    shown = [*quoted, card.first_mes, *card.alternate_greetings, *examples]
    assert quoted and not held_out & set(shown)


def test_training_data_keeps_the_one_line_persona(drafted):
    _, out, _ = drafted
    first = json.loads((out / "train.jsonl").read_text().splitlines()[0])
    assert first["messages"][0]["content"] == render(stub_card("Orla", "sample script"), "User").system


def test_cast_cards_and_existing_ones_are_kept(drafted, tmp_path):
    _, out, _ = drafted
    pip = load_card(out / "cards" / "pip.json")
    assert pip.name == "Pip" and "Pip talks most with Orla" in pip.data.description and pip.data.personality
    assert "asks a lot of questions" in pip.data.personality and pip.data.first_mes
    again = tmp_path / "again"
    prepare(sample_script_path(), "Orla", again, cast=1)
    edited = json.loads((again / "cards" / "pip.json").read_text())
    edited["data"]["description"] = "Edited by hand."
    (again / "cards" / "pip.json").write_text(json.dumps(edited))
    prepare(sample_script_path(), "Orla", again, cast=1)
    assert load_card(again / "cards" / "pip.json").data.description == "Edited by hand."
    prepare(sample_script_path(), "Orla", again, cast=1, force=True)
    assert load_card(again / "cards" / "pip.json").data.description != "Edited by hand."


def test_draft_with_a_model_writes_description_and_personality(tmp_path):
    answers = {"Description:": " Orla keeps the lighthouse on the island and mothers her apprentice Pip.\n\nPersonality: ignored",
               "Personality:": "Personality: Gruff and warm, she talks in weather and calls everyone sprat."}
    backend = ScriptedBackend(respond=lambda p: answers[p.reply_prefix])
    result = prepare(sample_script_path(), "Orla", tmp_path / "o", draft_with=backend)
    d = result.card.data
    assert d.description == "Orla keeps the lighthouse on the island and mothers her apprentice Pip."
    assert d.personality == "Gruff and warm, she talks in weather and calls everyone sprat."
    assert "were written by scripted:scripted from sampled lines; the measured draft was: Orla is a character" in d.creator_notes
    asked = "\n".join(m.content for m in backend.prompts[0].messages)
    assert "Lines Orla says:\n- " in asked and "Speech, measured:" in asked and "sprat" in asked
    assert [p.reply_prefix for p in backend.prompts] == ["Description:", "Personality:"]
    assert result.card.book is not None and len(example_dialogues(result.card)) == 4  # the rest stays as drafted
    useless = prepare(sample_script_path(), "Orla", tmp_path / "u", draft_with=ScriptedBackend(["I cannot."]))
    assert useless.card.data.description.startswith("Orla is a character in sample script")
    assert "gave no usable draft" in useless.card.data.creator_notes


@pytest.mark.torch
def test_draft_with_a_real_backend_through_the_cli(tmp_path):
    """--draft-with names a model; the backend comes from the settings as for chat (here a tiny transformers model)."""
    import os
    import subprocess
    import sys

    pytest.importorskip("torch")
    from train_support import make_tiny_base

    base = make_tiny_base(tmp_path / "tiny")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARBOT_")}
    run = subprocess.run([sys.executable, "-m", "charbot", "prepare", str(sample_script_path()), "-c", "Orla", "-o", str(tmp_path / "o"), "-q",
                          "--draft-with", str(base)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    card = load_card(tmp_path / "o" / "persona.json")
    assert f"transformers:{base}" in card.data.creator_notes  # the model was asked, whatever a random model answered
    assert card.data.description and card.data.personality and len(example_dialogues(card)) == 4 and card.book.entries


def test_stutters_are_found_but_hyphenated_words_are_not():
    assert stutters("I-I don't know, w-w-what is that?") == ["I-I", "w-w-what"]
    assert stutters("a well-known x-ray, uh-huh") == []

