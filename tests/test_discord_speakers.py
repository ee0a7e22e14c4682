"""Who speaks in a scene, and how the cast is loaded: plain functions over plain data, no gateway."""

from __future__ import annotations

import json
import random

import pytest

from cast_support import card, write_cast
from charbot.discord.cast import avatar_slug, load_cast
from charbot.discord.speakers import author_character, called_by_name, first_speaker, named_in, next_speaker
from charbot.errors import CharbotError

CAST = ["Rick Sanchez", "Morty", "Summer"]
QUIET = {"Rick Sanchez": 0.0, "Morty": 0.0, "Summer": 0.0}


def test_names_are_found_in_order_as_words_and_with_an_at():
    assert named_in("hey @summer, tell Morty", CAST) == ["Summer", "Morty"]
    assert named_in("Rick! and rick sanchez again", CAST) == ["Rick Sanchez"]  # first name when no one shares it
    assert named_in("Mortyyy and summertime", CAST) == []  # whole words only
    assert called_by_name("Morty, where are we?", CAST) == "Morty"
    assert called_by_name("@Rick what", CAST) == "Rick Sanchez"
    assert called_by_name("where is Morty?", CAST) is None  # a name further in does not address anyone


def test_first_speaker_reply_then_named_then_default_then_talkativeness():
    rng = random.Random(1)
    assert first_speaker(CAST, "Summer, hi", replied_to="Morty", talkativeness=QUIET, rng=rng) == "Morty"
    assert first_speaker(CAST, "what do you think, Summer?", default="Morty", talkativeness=QUIET, rng=rng) == "Summer"
    assert first_speaker(CAST, "hello", default="Morty", talkativeness=QUIET, rng=rng) == "Morty"
    assert first_speaker(CAST, "hello", default="Jerry", talkativeness={**QUIET, "Summer": 1.0}, rng=rng) == "Summer"
    # nobody wins the roll: the most talkative answers all the same (a person is never left unanswered)
    assert first_speaker(CAST, "hello", talkativeness={**QUIET, "Morty": 0.2}, rng=random.Random(0)) in CAST
    assert first_speaker(["Morty", "Summer"], "Rick?", replied_to="Rick Sanchez", talkativeness=QUIET, rng=rng) == "Morty"  # not active


def test_next_speaker_is_named_or_rolls_and_never_the_last_one():
    rng = random.Random(2)
    assert next_speaker(CAST, "Morty", "Summer, get in the car", talkativeness=QUIET, rng=rng) == "Summer"
    assert next_speaker(CAST, "Morty", "Morty is me", talkativeness={**QUIET, "Morty": 1.0}, rng=rng) is None
    assert next_speaker(CAST, "Morty", "okay", talkativeness={**QUIET, "Summer": 1.0}, rng=rng) == "Summer"
    rolls = [next_speaker(CAST, "Morty", "okay", talkativeness={**QUIET, "Summer": 0.5}, rng=random.Random(s)) for s in range(200)]
    assert 60 < rolls.count("Summer") < 140 and set(rolls) == {"Summer", None}


def test_only_this_bots_cast_is_recognised_as_an_author():
    common = dict(names=["Rick", "Morty"], bot_id=7)
    assert author_character(author_name="Rick", content="x", webhook_id=5, application_id=7, author_id=5, **common) == "Rick"
    assert author_character(author_name="Rick", content="x", webhook_id=5, application_id=None, author_id=5, **common) is None  # someone's webhook
    assert author_character(author_name="Orla", content="**Morty**: hi", webhook_id=None, application_id=None, author_id=7, **common) == "Morty"
    assert author_character(author_name="Orla", content="**Beth**: hi", webhook_id=None, application_id=None, author_id=7, **common) is None
    assert author_character(author_name="sam", content="**Morty**: hi", webhook_id=None, application_id=None, author_id=9, **common) is None


def test_cast_cards_give_talkativeness_and_avatars(tmp_path):
    from card_files import png_image, with_card_chunks  # a PNG card: its picture is the avatar

    cast_dir = write_cast(tmp_path / "cast", {
        "a": card("Rick", "0.9"), "b": card("Morty", None), "c": card("Summer", "loud"),
    })
    icon = {"type": "icon", "uri": "https://img.example/beth.png", "name": "main", "ext": "png"}
    beth = {**card("Beth", 2), "spec": "chara_card_v3", "spec_version": "3.0"}
    beth["data"].update(assets=[icon], group_only_greetings=[])
    write_cast(cast_dir, {"d": beth})
    (cast_dir / "e.png").write_bytes(with_card_chunks(png_image(), chara=card("Jerry", 0.1)))
    cast = load_cast(cast_dir, talkativeness=0.3, avatar_urls={"Rick": "https://img.example/rick.png"}, public_url="https://bot.example/")
    assert cast.names == ["Rick", "Morty", "Summer", "Beth", "Jerry"]
    assert [cast[n].talkativeness for n in cast.names] == [0.9, 0.3, 0.3, 1.0, 0.1]
    assert cast["Rick"].avatar_url == "https://img.example/rick.png"
    assert cast["Beth"].avatar_url == "https://img.example/beth.png"
    assert cast["Jerry"].avatar_url == "https://bot.example/avatars/jerry.png" and cast.by_avatar("jerry").image.startswith(b"\x89PNG")
    assert cast["Morty"].avatar_url is None  # a JSON card with no picture: the webhook's own avatar
    assert avatar_slug("Mr. Poopybutthole") == "mr-poopybutthole"


@pytest.mark.parametrize("files, expected", [
    ({"rick": "{not json", "morty": card("Morty")}, "rick.json"),
    ({"a": card("Rick"), "b": card("rick")}, "already has a character called 'rick'"),
    ({}, "holds no character cards"),
])
def test_a_bad_cast_is_a_one_line_error_naming_the_file(tmp_path, files, expected):
    cast_dir = tmp_path / "cast"
    cast_dir.mkdir()
    for stem, content in files.items():
        (cast_dir / f"{stem}.json").write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(CharbotError) as caught:
        load_cast(cast_dir)
    assert expected in str(caught.value) and "\n" not in str(caught.value) and caught.value.fix


def test_an_avatar_url_for_someone_not_in_the_cast_is_refused(tmp_path):
    cast_dir = write_cast(tmp_path / "cast", {"m": card("Morty")})
    with pytest.raises(CharbotError, match="'Mortimer', not in the cast"):
        load_cast(cast_dir, avatar_urls={"Mortimer": "https://x/m.png"})
