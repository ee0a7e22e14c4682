import json

import pytest

from charbot.errors import PersonaError
from charbot.persona import CharacterCard, example_dialogues, load_card, parse_card, render, save_card, substitute


def test_sample_card_is_v2_and_renders(sample_card):
    assert sample_card.spec == "chara_card_v2"
    assert sample_card.name == "Orla"
    rendered = render(sample_card, "Sam")
    assert "You are Orla" in rendered.system
    assert "Sam has climbed" in rendered.system  # {{user}} replaced in the scenario
    assert "{{" not in rendered.system + rendered.examples
    assert "Sam: Who are you?" in rendered.examples
    assert "Orla: Orla Finch, keeper of this light." in rendered.examples


def test_v1_card_is_upgraded(tmp_path):
    path = tmp_path / "v1.json"
    path.write_text(json.dumps({"name": "Bob", "description": "A baker.", "mes_example": "<START>\n{{user}}: Hi\n{{char}}: Bread?"}))
    card = load_card(path)
    assert card.spec == "chara_card_v2" and card.name == "Bob"
    assert [[(t.speaker, t.text) for t in b] for b in example_dialogues(card)] == [[("{{user}}", "Hi"), ("{{char}}", "Bread?")]]


def test_round_trip_keeps_unknown_fields(tmp_path, sample_card):
    raw = sample_card.model_dump(mode="json")
    raw["data"]["extensions"] = {"depth_prompt": {"depth": 4}}
    raw["data"]["character_book"] = {"entries": []}
    card = parse_card(raw)
    path = save_card(card, tmp_path / "out" / "card.json")
    again = load_card(path)
    assert again.model_dump(mode="json") == card.model_dump(mode="json")
    assert again.book is not None and again.book.entries == []
    assert again.model_dump(mode="json")["data"]["character_book"] == {"extensions": {}, "entries": []}


def test_substitute_is_case_insensitive_and_handles_legacy_tags():
    assert substitute("{{Char}} meets {{USER}}; <BOT> and <USER>", "Orla", "Sam") == "Orla meets Sam; Orla and Sam"
    assert substitute("{{user}} waves", "Orla", r"C:\Users\1") == r"C:\Users\1 waves"  # a name is text, not a pattern


def test_system_prompt_override_keeps_original():
    card = CharacterCard.model_validate({"data": {"name": "X", "system_prompt": "Be terse. {{original}}"}})
    assert render(card, "U").system.startswith("Be terse. You are X.")


@pytest.mark.parametrize(
    "content, expected",
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"spec": "chara_card_v2", "data": {"description": "no name"}}', "field 'data.name'"),
        ('{"spec": "chara_card_v4", "data": {"name": "A"}}', "unsupported card spec"),
        ('{"spec": "chara_card_v3", "spec_version": "4.0", "data": {"name": "A"}}', "spec_version '4.0'"),
        ('{"spec": "chara_card_v2", "data": {"name": "A", "character_book": {"entries": [{"keys": "Gerald"}]}}}', "character_book.entries.0.keys"),
        ('{"name": ""}', "field 'name'"),
    ],
)
def test_malformed_cards_are_one_line_errors(tmp_path, content, expected):
    path = tmp_path / "card.json"
    path.write_text(content)
    with pytest.raises(PersonaError) as err:
        load_card(path)
    message = str(err.value)
    assert expected in message and str(path) in message and "\n" not in message


def test_card_file_errors(tmp_path):
    with pytest.raises(PersonaError, match="no such persona card"):
        load_card(tmp_path / "missing.json")
    (tmp_path / "latin.json").write_bytes(b'{"name": "Jos\xe9"}')
    with pytest.raises(PersonaError, match="not UTF-8"):
        load_card(tmp_path / "latin.json")
    big = tmp_path / "big.json"
    big.write_text('{"name": "A", "description": "' + "x" * 2_100_000 + '"}')
    with pytest.raises(PersonaError, match="too big"):
        load_card(big)
    with pytest.raises(PersonaError, match="not a file"):
        load_card(tmp_path)
