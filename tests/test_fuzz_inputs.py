"""Files and settings from users: whatever they contain, the only thing that escapes is the project's own
one-line CharbotError (property-based with hypothesis), and path tricks get a clear error, never a hang."""

from __future__ import annotations

import base64
import json
import os
import socket
import tempfile
import types
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from card_files import charx, chunk, png_image, text_chunk
from charbot.cards import parse_card_bytes
from charbot.config import FLAT, field_info, load_settings
from charbot.errors import CharbotError, ConfigError, PersonaError
from charbot.persona import MAX_CARD_BYTES, load_card, parse_card, render
from charbot.prepare import ScriptError, prepare

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def one_line(error: BaseException) -> str:
    text = str(error)
    assert text and "\n" not in text, repr(text)
    return text


# --- script files (charbot prepare) --------------------------------------------------------------------

cells = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
csv_like = st.lists(st.lists(cells, min_size=1, max_size=5), min_size=0, max_size=12).map(
    lambda rows: "\n".join(st_join(r) for r in rows)
)


def st_join(row: list[str]) -> str:
    return ",".join(row)


scripts = st.one_of(
    st.binary(max_size=600),
    csv_like.map(lambda t: t.encode("utf-8")),
    csv_like.map(lambda t: ("name,line\n" + t).encode("utf-8")),
    csv_like.map(lambda t: ("episode,name,line\n1,Orla,Aye.\n" + t).encode("utf-8")),
    st.tuples(st.sampled_from(["utf-16", "cp1252", "latin-1", "utf-8-sig"]), csv_like).map(
        lambda p: ("name,line\n" + p[1]).encode(p[0], errors="replace")
    ),
)


@FUZZ
@given(data=scripts, character=st.sampled_from(["Orla", "orla", "Pip", "x"]))
def test_prepare_raises_only_script_errors(data: bytes, character: str):
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "script.csv"
        script.write_bytes(data)
        out = Path(tmp) / "out"
        try:
            result = prepare(script, character, out, context=2)
        except ScriptError as exc:
            assert str(script) in one_line(exc)
            assert not out.exists() or not any(out.iterdir())  # nothing half-written
        except CharbotError as exc:
            one_line(exc)
        else:
            assert result is not None and (out / "persona.json").exists()


def test_prepare_path_tricks_are_clear_errors(tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)  # opening it for reading would block forever
    sock_path = tmp_path / "s.csv"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    loop = tmp_path / "loop.csv"
    loop.symlink_to(loop)
    cases = {
        fifo: "not a regular file", sock_path: "not a regular file", Path("/dev/zero"): "not a regular file",
        tmp_path: "is a directory", tmp_path / "missing.csv": "no such file", loop: "",
    }
    try:
        for path, says in cases.items():
            with pytest.raises(ScriptError) as caught:
                prepare(path, "Orla", tmp_path / "out")
            assert says in one_line(caught.value) and str(path) in str(caught.value)
    finally:
        sock.close()
    assert not (tmp_path / "out").exists()


# --- persona cards -------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
card_fields = st.sampled_from(["name", "description", "personality", "scenario", "first_mes", "mes_example", "tags",
                               "alternate_greetings", "extensions", "system_prompt", "character_version"])
card_like = st.one_of(
    json_values,
    st.dictionaries(card_fields, json_values, max_size=6),
    st.dictionaries(card_fields, json_values, max_size=6).map(lambda d: {"spec": "chara_card_v2", "spec_version": "2.0", "data": d}),
    st.dictionaries(st.sampled_from(["spec", "spec_version", "data"]), json_values, max_size=3),
)


@FUZZ
@given(raw=card_like)
def test_parse_card_raises_only_persona_errors(raw):
    try:
        card = parse_card(raw, "fuzz.json")
    except PersonaError as exc:
        assert "fuzz.json" in one_line(exc)
    else:
        assert render(card, "User").system  # a card that loads also renders


@FUZZ
@given(data=st.one_of(st.binary(max_size=400), card_like.map(lambda v: json.dumps(v).encode()),
                      card_like.map(lambda v: json.dumps(v).encode("utf-16"))))
def test_load_card_raises_only_persona_errors(data: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "card.json"
        path.write_bytes(data)
        try:
            load_card(path)
        except PersonaError as exc:
            assert str(path) in one_line(exc)


def test_deeply_nested_card_json_is_a_clear_error(tmp_path):
    for i, text in enumerate(["[" * 100_000 + "]" * 100_000, '{"name": "x", "extensions": ' + '{"a": ' * 5000 + "1" + "}" * 5001]):
        path = tmp_path / f"deep{i}.json"
        path.write_text(text)
        with pytest.raises(PersonaError) as caught:
            load_card(path)
        assert "nested too deeply" in one_line(caught.value)


def test_card_path_tricks_and_size_limit(tmp_path):
    big = tmp_path / "big.json"
    with big.open("wb") as fh:
        fh.truncate(MAX_CARD_BYTES + 1)  # sparse: costs no disk
    fifo = tmp_path / "card.fifo"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop)
    cases = {big: "too big", fifo: "not a file", Path("/dev/zero"): "not a file", tmp_path: "not a file",
             tmp_path / "none.json": "no such persona card", loop: ""}
    for path, says in cases.items():
        with pytest.raises(PersonaError) as caught:
            load_card(path)
        assert says in one_line(caught.value)


# --- card files and lorebooks -----------------------------------------------------------------------------

png_parts = st.lists(st.one_of(
    st.binary(max_size=60).map(lambda b: chunk(b"tEXt", b)),
    st.tuples(st.sampled_from(["chara", "ccv3", "CCV3", "Software"]), st.binary(max_size=80)).map(lambda p: text_chunk(*p)),
    st.tuples(st.sampled_from(["chara", "ccv3"]), card_like).map(lambda p: text_chunk(p[0], base64.b64encode(json.dumps(p[1]).encode()))),
    st.binary(min_size=1, max_size=40),  # garbage where a chunk should start
), max_size=4)


@FUZZ
@given(parts=png_parts, cut=st.integers(0, 300))
def test_png_cards_raise_only_persona_errors(parts, cut):
    data = png_image()[:-12] + b"".join(parts) + chunk(b"IEND", b"")
    data = data[: max(8, len(data) - cut)]  # and truncated anywhere
    try:
        card_file = parse_card_bytes(data, "fuzz.png")
    except PersonaError as exc:
        assert "fuzz.png" in one_line(exc)
    else:
        assert card_file.card.name and render(card_file.card, "User").system


@FUZZ
@given(card=card_like, names=st.lists(st.sampled_from(["assets/icon/images/main.png", "CARD.JSON", "dir/card.json", "../x"]), max_size=3),
       has_card=st.booleans(), flip=st.integers(0, 5000))
def test_charx_archives_raise_only_persona_errors(card, names, has_card, flip):
    data = bytearray(charx(card if has_card else None, {n: b"data" for n in names}))
    if flip % 3 == 0:
        data[flip % len(data)] ^= 0xFF  # damage a byte somewhere in the archive
    try:
        card_file = parse_card_bytes(bytes(data), "fuzz.charx")
    except PersonaError as exc:
        assert "fuzz.charx" in one_line(exc)
    else:
        assert card_file.format in ("charx", "json") and card_file.card.name


entry_fields = st.sampled_from(["keys", "content", "enabled", "insertion_order", "use_regex", "constant", "selective", "secondary_keys",
                                "position", "extensions", "case_sensitive", "priority", "key", "keysecondary", "order", "disable", "depth"])
entry_values = json_values | st.lists(st.text(max_size=8), max_size=3) | st.dictionaries(
    st.sampled_from(["position", "depth", "role", "selectiveLogic", "scan_depth", "match_whole_words"]), json_values, max_size=3)
entries_like = st.lists(st.dictionaries(entry_fields, entry_values, max_size=6), max_size=4)
lorebook_like = st.one_of(
    json_values,
    st.fixed_dictionaries({"entries": entries_like}, optional={"scan_depth": json_values, "token_budget": json_values}),
    entries_like.map(lambda es: {"entries": {str(i): e for i, e in enumerate(es)}}),
    entries_like.map(lambda es: {"spec": "lorebook_v3", "data": {"entries": es}}),
)


@FUZZ
@given(raw=lorebook_like, messages=st.lists(st.text(max_size=60), max_size=4))
def test_lorebooks_raise_only_persona_errors_and_scanning_never_fails(raw, messages):
    from charbot.lore_scan import scan
    from charbot.lorebook import parse_lorebook

    try:
        book = parse_lorebook(raw, "fuzz-lore.json")
    except PersonaError as exc:
        assert "fuzz-lore.json" in one_line(exc)
        return
    result = scan([("fuzz", book)], messages)
    assert all(a.content.strip() for a in result.fired)


# --- settings ------------------------------------------------------------------------------------------

def _bad_values(annotation) -> list[str]:
    """Environment strings no field of this type accepts."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return ["no-such-choice"]
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    kind = [a for a in args if a is not type(None)][0] if optional else annotation
    if typing.get_origin(kind) is typing.Literal:
        return ["no-such-choice"]
    if kind is bool:
        return ["maybe"]
    if kind in (int, float):
        return ["lots", "-1e999"]
    if typing.get_origin(kind) is list:
        return ["1,2", "[1, \"x\"]", "{not json"]
    if typing.get_origin(kind) is tuple:
        return ["{not json", "[1, 2]"]
    if typing.get_origin(kind) is dict:  # name -> URL or model: never empty
        return ["{not json", "[1, 2]", '{"Rick": ""}']
    return []


# Every setting by its flat name (CHARBOT_<NAME>), whichever group it lives in.
# (Shard ids may be written 0,1 as well as [0, 1], as `--shard-ids 0,1` takes them.)
CHECKED = [(name, value) for name in FLAT for value in _bad_values(field_info(name).annotation)
           if (name, value) != ("discord_shard_ids", "1,2")]


def test_every_typed_setting_is_checked():
    names = {n for n, _ in CHECKED}
    typed = {n for n in FLAT if field_info(n).annotation not in (str, str | None)}
    assert typed - names <= {"persona_dir", "db_path", "prompt_cache_dir", "cast_dir"}, typed - names  # paths: any string is a path


@pytest.mark.parametrize(("name", "value"), CHECKED)
def test_invalid_setting_is_a_one_line_error_naming_it(isolated_env, monkeypatch, name, value):
    monkeypatch.setenv(f"CHARBOT_{name.upper()}", value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = one_line(caught.value)
    assert name in message and f"CHARBOT_{name.upper()}" in message


@pytest.mark.parametrize(("env", "says"), [
    ({"CHARBOT_TEMPERATURE": "-1"}, "temperature"),
    ({"CHARBOT_BASE_URL": "ftp://x"}, "base_url"),
    ({"CHARBOT_DISCORD_GATEWAY_URL": "http://gw"}, "discord_gateway_url"),
    ({"CHARBOT_DISCORD_API_URL": "discord.com/api"}, "discord_api_url"),
    ({"CHARBOT_DISCORD_ALLOWED_USERS": "[1,x"}, "discord_allowed_users"),
    ({"CHARBOT_CONTEXT_WINDOW": "12"}, "context_window"),
])
def test_cli_reports_an_invalid_setting_in_one_line(isolated_env, monkeypatch, capsys, env, says):
    from charbot.cli import main

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as exc:
        main(["chat"])  # settings are checked before any input is read
    err = capsys.readouterr().err.strip()
    assert exc.value.code != 0 and "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("charbot: error:") and says in err


def test_toml_with_a_bad_value_names_the_setting(isolated_env):
    (isolated_env / "charbot.toml").write_text("[discord]\nmax_queue = \"many\"\n")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "discord_max_queue" in one_line(caught.value)


# --- messages of any size ------------------------------------------------------------------------------

@FUZZ
@given(text=st.text(min_size=1, max_size=6000), fmt=st.sampled_from(["chat", "dialogpt"]), window=st.sampled_from([256, 512, 2048]))
def test_prompt_fits_the_context_whatever_the_message(text, fmt, window):
    from charbot.factory import sample_card_path
    from charbot.persona import render
    from charbot.prompt import PromptBuilder

    def count(s: str) -> int:  # a rough tokenizer: words plus punctuation, like subword models' worst case
        return len(s.split()) + sum(not c.isalnum() and not c.isspace() for c in s) // 2

    builder = PromptBuilder(count, context_window=window, max_new_tokens=64, fmt=fmt, eos_token="<eos>")
    built = builder.build(render(load_card(sample_card_path()), "User"), [], text, "Marek")
    shown = built.prompt.text if fmt == "dialogpt" else built.prompt.messages[-1].content
    assert count(shown) <= window - 64
    if count(text) < 50:
        assert text in shown  # short messages are never cut


# --- API requests (charbot serve) ----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12,
)
messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", "wizard"]) | json_values},
    optional={"content": st.text(max_size=40) | st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]) | json_values,
                                                                                 "text": json_values})) | json_values,
              "name": st.text(max_size=80) | json_values},
), max_size=4)
requests = json_values | st.fixed_dictionaries({"messages": messages | json_values}, optional={
    name: json_values | st.integers(-5, 5000) | st.floats(-1, 3)
    for name in ("model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "seed", "stop", "n", "user",
                 "stream", "stream_options", "ignore_eos", "repetition_penalty")
})


@FUZZ
@given(body=requests, header=st.none() | st.text(max_size=200))
def test_any_api_request_maps_or_is_a_4xx_api_error(body, header):
    """Whatever a client sends, the request mapping gives the engine valid input or raises ApiError (400 or
    404): nothing else escapes to become a 500."""
    from charbot.generation import GenerationSettings
    from charbot.serve import openai_api as oa
    from charbot.serve.characters import Characters

    characters = Characters([load_card(Path(__file__).parents[1] / "src/charbot/data/sample/orla.json")], "User")
    try:
        request = oa.parse_request(body)
        _, card = characters.find(request.model)
        settings = oa.sampling(request, GenerationSettings(), max_tokens=512)
        history, text, speaker = oa.conversation(request.messages, card.name)
        oa.conversation_id(header, request)
    except oa.ApiError as error:
        assert error.status in (400, 404) and one_line(error) and "\n" not in error.message
        return
    assert 1 <= settings.max_new_tokens <= 512 and isinstance(text, str) and all(t.role in ("user", "assistant") for t in history)
