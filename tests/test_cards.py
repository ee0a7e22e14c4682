"""Character card files: JSON V1/V2/V3, PNG and APNG cards as SillyTavern writes them, CHARX archives; lossless
round trips through `charbot card convert`; `charbot card show`; and bad files as one-line errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
import zlib

import pytest
from click.testing import CliRunner
from PIL import Image

from card_files import apng_image, card_texts, charx, png_image, read_chunks, text_chunk, with_card_chunks, wren
from charbot.cards import parse_card_bytes, read_card_file, write_card_file
from charbot.cards.avatar import avatar_png
from charbot.cards.charx import MAX_MEMBERS, MAX_UNPACKED
from charbot.cli import cli
from charbot.errors import PersonaError
from charbot.persona import load_card, render


def contains(whole, part, where="") -> None:
    """Every field of `part`, at any depth, is in `whole` with the same value (lists element by element)."""
    if isinstance(part, dict):
        assert isinstance(whole, dict), where
        for key, value in part.items():
            assert key in whole, f"{where}.{key} was lost"
            contains(whole[key], value, f"{where}.{key}")
    elif isinstance(part, list):
        assert isinstance(whole, list) and len(whole) == len(part), where
        for i, (a, b) in enumerate(zip(whole, part)):
            contains(a, b, f"{where}[{i}]")
    else:
        assert whole == part, f"{where}: {whole!r} != {part!r}"


def wren_with_assets() -> dict:
    raw = wren(3)
    raw["data"]["assets"] = [{"type": "icon", "uri": "embeded://assets/icon/images/main.png", "name": "main", "ext": "png"},
                             {"type": "x_audio", "uri": "embeded://assets/other/audio/bell.ogg", "name": "bell", "ext": "ogg"}]
    return raw


# --- reading ---------------------------------------------------------------------------------------------


def test_png_card_prefers_ccv3_over_chara(tmp_path):
    old = wren(2, description="Wren, as the V2 chunk has her.")
    new = wren(3, description="Wren, as the V3 chunk has her.")
    both = tmp_path / "both.png"
    both.write_bytes(with_card_chunks(png_image(), chara=old, ccv3=new))
    card_file = read_card_file(both)
    assert card_file.card.data.description == "Wren, as the V3 chunk has her." and card_file.card.spec == "chara_card_v3"
    assert card_file.chunks == ("chara", "ccv3") and card_file.format == "png"
    only_v2 = tmp_path / "v2.png"
    only_v2.write_bytes(with_card_chunks(png_image(), chara=old))
    assert load_card(only_v2).data.description == "Wren, as the V2 chunk has her."
    assert load_card(only_v2).book.entries[0].keys == ["Heron", "the narrowboat"]  # the V2 character_book is read


def test_apng_card_and_a_card_whatever_the_file_is_called(tmp_path):
    animated = tmp_path / "wren.apng"
    animated.write_bytes(with_card_chunks(apng_image(frames=3), ccv3=wren(3)))
    assert load_card(animated).name == "Wren"
    misnamed = tmp_path / "wren.json"  # a PNG saved under the wrong name is still a PNG card
    misnamed.write_bytes(animated.read_bytes())
    assert read_card_file(misnamed).format == "png"


def test_json_v1_v2_v3_cards(tmp_path):
    for spec, raw in {"v1": wren(2)["data"], "v2": wren(2), "v3": wren(3)}.items():
        path = tmp_path / f"{spec}.json"
        path.write_text(json.dumps(raw))
        card = load_card(path)
        assert card.name == "Wren" and card.book is not None and len(card.book.entries) == 5
        assert "Lock nine is the deepest lock" not in render(card, "Sam").system  # lore only enters when it fires


def test_charx_card_with_assets(tmp_path):
    icon = png_image(4, 4, (200, 30, 30))
    raw = wren_with_assets()
    path = tmp_path / "wren.charx"
    path.write_bytes(charx(raw, {"assets/icon/images/main.png": icon, "assets/other/audio/bell.ogg": b"OggS fake"}, {"x_meta.json": b"{}"}))
    card_file = read_card_file(path)
    assert card_file.card.name == "Wren" and card_file.image == icon
    assert set(card_file.assets) == {"assets/icon/images/main.png", "assets/other/audio/bell.ogg", "x_meta.json"}


# --- writing and round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [2, 3])
def test_round_trips_through_every_format_keep_every_field(tmp_path, spec):
    raw = wren(spec)
    raw["x_top_level"] = {"kept": [1, 2]}
    raw["data"]["x_unknown_field"] = "kept too"
    raw["data"]["character_book"]["entries"][0]["extensions"] = {"position": 1, "x_tool": {"a": None}}
    source = tmp_path / "in.json"
    source.write_text(json.dumps(raw))
    path = source
    for step, suffix in enumerate([".png", ".charx", ".json", ".png", ".json"]):
        out = tmp_path / f"step{step}{suffix}"
        result = CliRunner().invoke(cli, ["card", "convert", str(path), str(out)])
        assert result.exit_code == 0, result.output
        path = out
    final = json.loads(path.read_text())
    assert final["spec"] == "chara_card_v3" and final["spec_version"] == "3.0"  # .json is written as V3
    expected = {k: v for k, v in raw.items() if k not in ("spec", "spec_version")}
    contains(final, expected)


def test_png_is_written_as_sillytavern_writes_it(tmp_path):
    picture = png_image(5, 3, (1, 2, 3), extra=[text_chunk("Software", b"paint"), text_chunk("chara", b"stale")])
    source = tmp_path / "in.png"
    source.write_bytes(with_card_chunks(picture, chara=wren(2)))
    target = tmp_path / "out.png"
    assert CliRunner().invoke(cli, ["card", "convert", str(source), str(target)]).exit_code == 0
    chunks = read_chunks(target.read_bytes())
    kinds = [k for k, _ in chunks]
    assert kinds[-3:] == [b"tEXt", b"tEXt", b"IEND"]
    assert [p.partition(b"\0")[0] for k, p in chunks if k == b"tEXt"] == [b"Software", b"chara", b"ccv3"]  # the stale one is gone
    image_chunks = [c for c in chunks if c[0] in (b"IHDR", b"IDAT")]
    assert image_chunks == [c for c in read_chunks(picture) if c[0] in (b"IHDR", b"IDAT")]  # the picture is untouched
    texts = card_texts(target.read_bytes())
    assert texts["chara"]["spec"] == "chara_card_v2" and texts["ccv3"]["spec"] == "chara_card_v3"
    assert texts["chara"]["data"] == {k: v for k, v in texts["ccv3"]["data"].items() if k != "group_only_greetings"}
    with Image.open(target) as image:
        assert image.size == (5, 3)


def test_a_card_without_a_picture_gets_an_avatar_from_its_name(tmp_path):
    source = tmp_path / "wren.json"
    source.write_text(json.dumps(wren(2)))
    target = tmp_path / "wren.png"
    assert CliRunner().invoke(cli, ["card", "convert", str(source), str(target)]).exit_code == 0
    with Image.open(target) as image:
        assert image.size == (400, 400)
        corner = image.convert("RGB").getpixel((2, 2))
    with Image.open(io.BytesIO(avatar_png("Wren"))) as same:
        assert same.convert("RGB").getpixel((2, 2)) == corner  # the colour comes from the name
    with Image.open(io.BytesIO(avatar_png("Orla Finch"))) as other:
        assert other.convert("RGB").getpixel((2, 2)) != corner
        assert other.convert("RGB").getpixel((200, 200)) != other.convert("RGB").getpixel((2, 2))  # initials drawn


def test_charx_to_png_uses_the_icon_and_warns_about_other_assets(tmp_path):
    icon = png_image(4, 4, (200, 30, 30))
    raw = wren_with_assets()
    source = tmp_path / "wren.charx"
    source.write_bytes(charx(raw, {"assets/icon/images/main.png": icon, "assets/other/audio/bell.ogg": b"OggS"}))
    png_out, charx_out = tmp_path / "w.png", tmp_path / "again.charx"
    warnings = write_card_file(read_card_file(source), png_out)
    assert warnings and "2 embedded asset(s)" in warnings[0]
    assert [c for c in read_chunks(png_out.read_bytes()) if c[0] == b"IDAT"] == [c for c in read_chunks(icon) if c[0] == b"IDAT"]
    assert card_texts(png_out.read_bytes())["ccv3"]["data"]["assets"] == [{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}]
    assert write_card_file(read_card_file(source), charx_out) == []
    with zipfile.ZipFile(charx_out) as z:
        assert z.read("assets/other/audio/bell.ogg") == b"OggS" and z.read("assets/icon/images/main.png") == icon


def test_convert_adds_a_lorebook_to_the_cards_own_book(tmp_path):
    from card_files import world_info

    source, world, target = tmp_path / "wren.json", tmp_path / "world.json", tmp_path / "wren.png"
    source.write_text(json.dumps(wren(2)))
    world.write_text(json.dumps(world_info()))
    result = CliRunner().invoke(cli, ["card", "convert", str(source), str(target), "--lorebook", str(world)])
    assert result.exit_code == 0, result.output
    book = load_card(target).book
    assert book.name == "The Fenmoor Cut" and [e.keys for e in book.entries[5:]] == [["sluice"], ["Pike"], ["flood"], ["/gate ?keys?/i"], ["Mill"]]
    assert len(book.entries) == 10 and book.entries[7].extensions["depth"] == 2  # SillyTavern's fields kept in extensions


@pytest.mark.model  # sizes are counted with the embedded model's tokenizer
def test_card_show_summarises_the_card(tmp_path):
    path = tmp_path / "wren.png"
    path.write_bytes(with_card_chunks(png_image(), chara=wren(2), ccv3=wren(3)))
    result = CliRunner().invoke(cli, ["card", "show", str(path)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Wren  (chara_card_v3 3.0, PNG card, chunks chara + ccv3)" in out
    assert "tokens (SmolLM2-135M-Instruct.Q4_1.gguf): description " in out
    assert "greetings: 2 (1 alternate, 0 group-only)" in out
    assert "lorebook 'The Fenmoor Cut': 5 entries, scan depth 2" in out
    assert "#0 the boat: Heron, the narrowboat | keys | after_char | order 10 |" in out
    assert "#1 tolls: tolls | selective, secondary: winter | before_char" in out
    assert "#2 Lock nine is the deepest lock on the Cut.: (no keys) | constant | before_char" not in out  # labelled by comment or key
    assert "| constant | before_char | order 5" in out and "at depth 1 as system" in out and "[disabled]" in out


# --- bad files: one line naming the file and the fix --------------------------------------------------


def _bomb() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("card.json", json.dumps(wren(3)))
        z.writestr("assets/other/zeros.bin", b"\0" * (MAX_UNPACKED + 1))
    return out.getvalue()


def _many_members() -> bytes:
    return charx(wren(3), {f"assets/other/f{i}.txt": b"x" for i in range(MAX_MEMBERS + 1)})


BAD = {
    "no card chunk": (lambda: png_image(), "a PNG without a character card"),
    "bad base64": (lambda: with_card_chunks(png_image(), raw={"ccv3": b"not*base64!"}), "not valid base64"),
    "not JSON inside": (lambda: with_card_chunks(png_image(), raw={"chara": b"aGVsbG8gd29ybGQ="}), "invalid JSON"),
    "truncated PNG": (lambda: with_card_chunks(png_image(), ccv3=wren(3))[:-30], "truncated PNG"),
    "damaged PNG": (lambda: with_card_chunks(png_image(), ccv3=wren(3)).replace(b"IDAT", b"IDAU", 1), "bad CRC"),
    "CHARX without card.json": (lambda: charx(None, {"assets/icon/images/main.png": png_image()}), "without card.json"),
    "zip bomb": (_bomb, "would unpack to"),
    "too many members": (_many_members, "files in the archive"),
    "not a zip": (lambda: b"PK\x03\x04" + b"\0" * 40, "not a readable CHARX"),
    "thousands of lore entries": (lambda: json.dumps(wren(2, book={"entries": [{"keys": ["k"], "content": "c"}] * 5000})).encode(), "too many items"),
    "wrong types": (lambda: json.dumps(wren(2, tags="one,two")).encode(), "field 'data.tags'"),
    "lore key not a string": (lambda: json.dumps(wren(2, book={"entries": [{"keys": [7], "content": "c"}]})).encode(), "character_book.entries.0.keys.0"),
    "unknown spec": (lambda: json.dumps({**wren(3), "spec": "chara_card_v9"}).encode(), "unsupported card spec 'chara_card_v9'"),
    "unknown spec version": (lambda: json.dumps({**wren(3), "spec_version": "4.0"}).encode(), "spec_version '4.0'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_card_files_are_one_line_errors(tmp_path, case):
    build, says = BAD[case]
    path = tmp_path / "card.png"
    path.write_bytes(build())
    with pytest.raises(PersonaError) as caught:
        load_card(path)
    message = str(caught.value)
    assert says in message and str(path) in message and "\n" not in message and " — " in message  # what, then the fix


def test_bad_cards_through_the_cli_exit_non_zero_without_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARBOT_")}
    for case in ("no card chunk", "zip bomb", "unknown spec version"):
        path = tmp_path / f"{case.replace(' ', '-')}.png"
        path.write_bytes(BAD[case][0]())
        run = subprocess.run([sys.executable, "-m", "charbot", "card", "convert", str(path), str(tmp_path / "out.json")],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
        lines = [line for line in run.stderr.splitlines() if line.strip()]
        assert run.returncode != 0 and "Traceback" not in run.stderr and len(lines) == 1, run.stderr
        assert lines[0].startswith("charbot: error: ") and str(path) in lines[0] and BAD[case][1] in lines[0]
        assert not (tmp_path / "out.json").exists()


def test_unknown_output_format_and_parse_card_bytes_name_the_source(tmp_path):
    path = tmp_path / "wren.json"
    path.write_text(json.dumps(wren(2)))
    with pytest.raises(PersonaError, match="unknown card format '.webp'"):
        write_card_file(read_card_file(path), tmp_path / "wren.webp")
    with pytest.raises(PersonaError, match="upload.png: a PNG without a character card"):
        parse_card_bytes(png_image(), "upload.png")
    assert zlib.crc32(b"") == 0  # (the tests' own chunk writer uses the same CRC as the PNG spec)
