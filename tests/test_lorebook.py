"""Lorebooks: which entries fire and why, where they go in the prompt, the budget, both file formats, regex
keys with a time limit, and `charbot prompt` showing it all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from card_files import BOOK_V2, png_image, with_card_chunks, world_info, wren
from charbot.config import load_settings
from charbot.engine import Engine
from charbot.errors import PersonaError
from charbot.factory import build_engine
from charbot.lore_scan import scan, split_decorators
from charbot.lorebook import Lorebook, load_lorebook, parse_lorebook
from charbot.memory import Turn
from charbot.persona import parse_card
from conftest import ScriptedBackend


def book(*entries: dict, **fields) -> Lorebook:
    return Lorebook.model_validate({"entries": [{"content": f"entry {i}", **e} for i, e in enumerate(entries)], **fields})


def fired(b: Lorebook, *messages: str) -> list[str]:
    return [a.content for a in scan([("b", b)], list(messages)).fired]


def test_keys_match_whole_words_and_phrases_case_insensitively():
    b = book({"keys": ["Heron"]}, {"keys": ["lock nine"]}, {"keys": ["Mill"], "case_sensitive": True}, {"keys": ["eel"], "extensions": {"match_whole_words": False}})
    assert fired(b, "Is the HERON moored?") == ["entry 0"]
    assert fired(b, "The Heronsgate boat is late.") == []  # a word inside another word is not the key
    assert fired(b, "we passed Lock   Nine at dawn") == ["entry 1"]
    assert fired(b, "the mill is shut") == [] and fired(b, "the Mill is shut") == ["entry 2"]
    assert fired(b, "eels everywhere") == ["entry 3"]  # SillyTavern's match_whole_words: false


def test_scan_depth_counts_the_newest_messages():
    b = book({"keys": ["Heron"]})
    assert fired(b, "the Heron", "hello", "hi") == []  # default depth 2: the two newest messages
    assert fired(b, "the Heron", "hello") == ["entry 0"]
    assert fired(book({"keys": ["Heron"]}, scan_depth=3), "the Heron", "hello", "hi") == ["entry 0"]
    assert fired(book({"keys": ["Heron"], "content": "@@scan_depth 3\nfar"}), "the Heron", "a", "b") == ["far"]
    assert fired(book({"keys": ["Heron"], "extensions": {"scan_depth": 1}}), "the Heron", "a") == []
    why = scan([("b", book({"keys": ["heron"]}))], ["the Heron", "x"]).fired[0].why
    assert why == "key 'heron' in message 2 (newest first, scan depth 2)"


def test_selective_constant_enabled_and_decorators():
    b = book(
        {"keys": ["tolls"], "secondary_keys": ["winter"], "selective": True},
        {"keys": ["tolls"], "secondary_keys": ["winter", "frost"], "selective": True, "extensions": {"selectiveLogic": 2}},  # NOT_ANY
        {"keys": ["tolls"], "secondary_keys": ["winter", "frost"], "selective": True, "extensions": {"selectiveLogic": 3}},  # AND_ALL
        {"keys": ["tolls"], "secondary_keys": ["winter"], "selective": False},  # secondary keys unused
        {"keys": [], "constant": True},
        {"keys": ["tolls"], "enabled": False},
        {"keys": ["tolls"], "content": "@@dont_activate\nnever"},
        {"keys": [], "content": "@@activate\nalways"},
        {"keys": ["tolls"], "content": "@@unknown_thing 3\n@@@exclude_keys summer\nnot in summer"},
    )
    assert fired(b, "what are the tolls") == ["entry 1", "entry 3", "entry 4", "always", "not in summer"]
    assert fired(b, "tolls in winter frost") == ["entry 0", "entry 2", "entry 3", "entry 4", "always", "not in summer"]
    assert fired(b, "summer tolls") == ["entry 1", "entry 3", "entry 4", "always"]
    assert split_decorators("@@depth 2\n@@role user\n\nText") == ("Text", [("depth", "2"), ("role", "user")])


def test_regex_keys_and_a_catastrophic_pattern_cannot_stall():
    b = book(
        {"keys": ["flood(s|ing)?"], "use_regex": True},
        {"keys": ["/GATE ?KEYS?/i"]},  # SillyTavern writes regex keys as /pattern/flags
        {"keys": ["(unclosed"], "use_regex": True},
        {"keys": ["(a|aa)+$"], "use_regex": True},  # exponential backtracking on "aaaa…!"
    )
    assert fired(b, "the flooding came") == ["entry 0"] and fired(b, "where is the gate key?") == ["entry 1"]
    started = time.perf_counter()
    result = scan([("b", b)], ["a" * 40 + "!", "a" * 40 + "!"])
    assert time.perf_counter() - started < 1.0
    assert result.fired == []
    assert any("invalid" in n for n in result.notes) and any("timed out" in n for n in result.notes)


def test_world_info_export_converts_field_for_field(tmp_path):
    path = tmp_path / "world.json"
    path.write_text(json.dumps(world_info()))
    b = load_lorebook(path)
    assert [e.keys for e in b.entries] == [["sluice"], ["Pike"], ["flood"], ["/gate ?keys?/i"], ["Mill"]]
    assert b.entries[1].secondary_keys == ["bridge", "inn"] and b.entries[1].extensions["selectiveLogic"] == 2
    assert b.entries[2].extensions["depth"] == 2 and b.entries[2].extensions["role"] == 1 and b.entries[0].insertion_order == 50
    assert b.entries[4].extensions["case_sensitive"] is True and b.entries[0].extensions["addMemo"] is True  # nothing dropped
    result = scan([("w", b)], ["Pike at the inn", "the sluice, the flood, the gate keys, the mill"])
    assert [a.label for a in result.fired] == ["sluice", "flood", "/gate ?keys?/i"]  # Pike: NOT_ANY with "inn"; Mill: case
    flood = result.fired[1]
    assert (flood.position, flood.depth, flood.role) == ("depth", 2, "user")
    v3 = tmp_path / "book.json"
    v3.write_text(json.dumps({"spec": "lorebook_v3", "data": BOOK_V2}))
    assert len(load_lorebook(v3).entries) == 5


@pytest.mark.parametrize(
    "raw, says",
    [
        ([], "must be a JSON object"),
        ({"spec": "lorebook_v9", "data": {"entries": []}}, "unsupported lorebook spec"),
        ({"spec": "chara_card_v2", "data": {}}, "is a character card"),
        ({"entries": "none"}, "no 'entries'"),
        ({"entries": {"0": "text"}}, "entry 0 is not an object"),
        ({"entries": [{"keys": ["a"], "content": 3}]}, "field 'entries.0.content'"),
        ({"entries": [{"keys": ["a"]}] * 1500}, "1500 entries (the most is 1000)"),
        ({"entries": {str(i): {"key": ["a"]} for i in range(3000)}}, "3000 entries"),
    ],
)
def test_bad_lorebooks_are_one_line_errors(raw, says):
    with pytest.raises(PersonaError) as caught:
        parse_lorebook(raw, "lore.json")
    assert says in str(caught.value) and "lore.json" in str(caught.value) and "\n" not in str(caught.value)


# --- in the prompt --------------------------------------------------------------------------------------


def engine_for(store, card_raw: dict, context_window: int = 2048, **kw) -> tuple[Engine, ScriptedBackend]:
    backend = ScriptedBackend(["Aye."], context_window=context_window)
    return Engine(backend, store, parse_card(card_raw), **kw), backend


async def test_entries_go_before_and_after_the_character_and_at_a_depth(store):
    engine, _ = engine_for(store, wren(2))
    history = [Turn("user", "morning"), Turn("assistant", "Morning."), Turn("user", "the eel trap again"), Turn("assistant", "Hm.")]
    built, _ = await engine.build_prompt("", "is the Heron yours? and the winter tolls?", history=history)
    messages = built.prompt.messages
    system = messages[0].content
    order = [system.index(s) for s in ("You are Wren.", "Lock nine is the deepest", "In winter the tolls double", "Wren Alder, keeper",
                                        "Scenario:", "The Heron is Wren's narrowboat")]
    assert order == sorted(order)  # before_char (by insertion order) before the description, after_char after the scenario
    assert "ghost" not in system  # disabled
    assert "Eels are bad luck" not in "".join(m.content for m in messages)  # "eel" is three messages back: past scan depth 2
    assert "eel" not in [u.entry.label for u in (await engine.build_prompt("", "any eels?", history=history))[0].lore]  # "eels" is not "eel"
    built, _ = await engine.build_prompt("", "any eel about?", history=history)
    roles = [(m.role, m.content[:12]) for m in built.prompt.messages]
    assert roles[-2:] == [("system", "Eels are bad"), ("user", "any eel abou")]  # @@depth 1: before the newest message
    labels = {u.entry.label: (u.placed, u.note) for u in built.lore}
    assert labels["eel"] == (True, "at depth 1 as system")


async def test_depth_counts_messages_from_the_newest(store):
    raw = wren(2, book={"entries": [{"keys": ["eel"], "content": "@@depth 3\nDEEP", "extensions": {}, "enabled": True, "insertion_order": 1}]})
    engine, _ = engine_for(store, raw)
    history = [Turn("user", "one"), Turn("assistant", "two"), Turn("user", "three"), Turn("assistant", "four")]
    built, _ = await engine.build_prompt("", "eel?", history=history)
    contents = [m.content for m in built.prompt.messages]
    assert contents[-5:] == ["two", "DEEP", "three", "four", "eel?"]  # before the third newest message


async def test_the_budget_keeps_constants_first_then_priority_and_never_cuts_an_entry(store):
    words = " ".join(["word"] * 40)  # ScriptedBackend counts words: each entry costs 41 tokens
    entries = [
        {"keys": ["storm"], "content": f"LOW {words}", "insertion_order": 1, "extensions": {}, "enabled": True},
        {"keys": ["storm"], "content": f"HIGH {words}", "insertion_order": 90, "extensions": {}, "enabled": True},
        {"keys": [], "constant": True, "content": f"CONST {words}", "insertion_order": 0, "extensions": {}, "enabled": True},
        {"keys": ["storm"], "content": f"PRIO {words}", "insertion_order": 2, "priority": 95, "extensions": {}, "enabled": True},
    ]
    engine, _ = engine_for(store, wren(2, book={"entries": entries, "token_budget": 100}), context_window=2048)
    built, _ = await engine.build_prompt("", "a storm is coming")
    placed = [u.entry.content.split()[0] for u in built.lore if u.placed]
    assert placed == ["CONST", "PRIO"]  # the constant, then the highest priority; 2 x 42 tokens fit 100, a third does not
    left = [u for u in built.lore if not u.placed]
    assert all("do not fit the book's token_budget" in u.note for u in left)
    system = built.prompt.messages[0].content
    assert f"CONST {words}" in system and f"PRIO {words}" in system and "HIGH" not in system  # whole entries only
    # a small context: the lorebook share of the budget decides, and the whole prompt fits the window
    engine, backend = engine_for(store, wren(2, book={"entries": entries}), context_window=400)
    built, _ = await engine.build_prompt("", "a storm is coming", history=[Turn("user", "x " * 30), Turn("assistant", "y " * 30)] * 4)
    total = sum(backend.count_tokens(m.content) + 5 for m in built.prompt.messages)
    assert total <= 400 - engine.settings.max_new_tokens
    assert 0 < sum(u.placed for u in built.lore) < 4


async def test_global_lorebook_setting_and_the_card_book_both_apply(tmp_path, isolated_env):
    card = tmp_path / "wren.png"
    card.write_bytes(with_card_chunks(png_image(), chara=wren(2)))
    world = tmp_path / "world.json"
    world.write_text(json.dumps(world_info()))
    engine = build_engine(load_settings(persona=str(card), lorebook=str(world)), backend=ScriptedBackend())
    built, _ = await engine.build_prompt("", "the sluice by the Heron")
    await engine.store.close()  # the settings' SQLite file: its thread is not left running
    assert [u.entry.book for u in built.lore] == ["Wren's card", "Wren's card", "lorebook world.json"]  # constant, Heron, sluice
    system = built.prompt.messages[0].content
    assert "The sluice at lock nine sticks in frost." in system and "The Heron is Wren's narrowboat" in system


# --- charbot prompt: the real CLI and the real model's template -------------------------------------------


def run_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARBOT_")}
    env.update(CHARBOT_DB_PATH=str(cwd / "memory.db"), XDG_DATA_HOME=str(cwd / "xdg"))
    return subprocess.run([sys.executable, "-m", "charbot", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


@pytest.mark.model
def test_charbot_prompt_shows_the_entry_a_key_fires(tmp_path):
    card = tmp_path / "wren.png"
    card.write_bytes(with_card_chunks(png_image(), chara=wren(2), ccv3=wren(3)))
    run = run_cli("prompt", "--persona", str(card), "Good morning", "Is the Heron yours?", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "--- system ---\nYou are Wren." in run.stdout and "The Heron is Wren's narrowboat" in run.stdout
    assert "--- user ---\nGood morning\nIs the Heron yours?" in run.stdout  # two messages of one side are one turn
    assert "+ the boat (Wren's card #0): key 'Heron' in message 1 (newest first, scan depth 2) → after char" in run.stderr
    quiet = run_cli("prompt", "--persona", str(card), "Good morning", cwd=tmp_path)
    assert "narrowboat" not in quiet.stdout and "the boat" not in quiet.stderr
    raw = run_cli("prompt", "--persona", str(card), "--raw", "Is the Heron yours?", cwd=tmp_path)
    assert raw.stdout.startswith("<|im_start|>system\nYou are Wren.") and raw.stdout.rstrip().endswith("<|im_start|>assistant")
    assert "The Heron is Wren's narrowboat" in raw.stdout


@pytest.mark.model
def test_a_png_card_with_a_lorebook_chats_in_charbot_chat(tmp_path):
    card = tmp_path / "wren.png"
    card.write_bytes(with_card_chunks(png_image(), chara=wren(2), ccv3=wren(3)))
    fallback = "FALLBACK-REPLY-SENTINEL-77d1"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARBOT_")}
    env.update(CHARBOT_DB_PATH=str(tmp_path / "m.db"), XDG_DATA_HOME=str(tmp_path / "xdg"), CHARBOT_FALLBACK_REPLY=fallback)
    run = subprocess.run([sys.executable, "-m", "charbot", "chat", "--persona", str(card), "--max-new-tokens", "32", "--seed", "7"],
                         input="Hello\nIs the Heron yours?\n", capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        name, _, reply = line.partition(": ")
        assert name == "Wren" and reply.strip() != fallback and len(reply.split()) >= 3, line
