"""Malformed inputs through the real CLI: one line naming the file (and line), non-zero exit, no traceback, no files."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import pytest

from charbot.cli import main

GOOD = "episode,name,line\n1,Pip,Morning.\n1,Orla,Kettle's on.\n"

# name -> (file contents (bytes/str) or None for "no file", extra args, text expected in the error, line number or None)
CASES = {
    "empty file": (b"", [], "is empty", None),
    "whitespace only": ("\n\n   \n", [], "is empty", None),
    "header only": ("episode,name,line\n", [], "has a header but no rows", None),
    "header and blank lines": ("episode,name,line\n\n\n", [], "has a header but no rows", None),
    "binary file": (b"\x00\x01\x02\xffGARBAGE\x00" * 50, [], "binary", None),
    "zip archive": (b"PK\x03\x04" + b"\x00" * 64, [], "zip archive", None),
    "gzip file": (gzip.compress(GOOD.encode()), [], "gzip file", None),
    "no detectable columns": ("foo,bar,baz\n1,2,3\n", [], "no speaker column found", 1),
    "one column only": ("just some text\nmore text here\n", [], "cannot tell how the columns are separated", 1),
    "no line column": ("name,words\nOrla,hi\n", [], "no line column found", 1),
    "unterminated quote": ('name,line\nPip,Hello.\nOrla,"Kettle\'s on.\nPip,Right.\n', [], "unterminated quote", 3),
    "unterminated quote after doubled quotes": ('name,line\nPip,Hello.\nOrla,"He said ""hi"" and\nPip,Right.\n', [], "unterminated quote", 3),
    "unterminated quote, CRLF": (b'name,line\r\nPip,Hi.\r\nOrla,Aye.\r\nPip,"Kettle\r\n on,\r\nOrla,Aye.\r\n', [], "unterminated quote", 4),
    "unterminated quote past csv's field limit": ('name,line\nPip,Hello.\nOrla,"Kettle\n' + "Pip,Right then.\n" * 10_000, [], "unterminated quote", 3),
    "unterminated quote in an R export": (
        '"name" "line"\n"1" "Pip" "Hi \\"there\\"."\n"2" "Orla" "Aye."\n"3" "Pip" "Tea?"\n"4" "Orla" "Aye \\" never\n5 Pip Right\n',
        [], "unterminated quote", 5,
    ),
    "text after a closing quote": ('name,line\nPip,Hello.\nOrla,"Kettle"s on.\nPip,Right.\n', [], "malformed CSV (", 3),
    # past the sample that decides the delimiter, which csv's limit would spoil too
    "closed field longer than csv's limit": (
        "name,line\n" + "Pip,Hello.\n" * 30_000 + 'Orla,"' + "word " * 30_000 + '"\nPip,Right.\n', [], "malformed CSV (", 30_002,
    ),
    "wrong delimiter in rows": ("name,line\nPip;Hello.\nOrla;Aye.\n", [], "row has 1 fields but the header has 2", 2),
    "ragged row": (GOOD + "1,Pip,Extra,field\n", [], "row has 4 fields but the header has 3", 4),
    "duplicate header names": ("name,line,line\nPip,a,b\n", [], "duplicate column name 'line'", 1),
    "empty header": (",,\nPip,a,b\n", [], "the header row is empty", 1),
    "unknown character": (GOOD, ["--character", "Orly"], "no speaker 'Orly'; did you mean Orla (1 lines)?", None),
    "character nobody resembles": (GOOD, ["--character", "Zebedee"], "no speaker 'Zebedee'; speakers with most lines", None),
    "zero usable lines": ("name,line\nPip,Hello.\nOrla,(nods)\nOrla,[exits]\n", [], "'Orla' has 2 rows but none with usable dialogue", None),
    "no examples": ("episode,name,line\n1,Orla,Kettle's on.\n2,Orla,Still on.\n2,Orla,Always on.\n", [], "no examples", None),
    "bad alias": (GOOD, ["--alias", "Orla"], "--alias 'Orla' is not of the form VARIANT=NAME", None),
    "alias empty side": (GOOD, ["--alias", "=Orla"], "is not of the form VARIANT=NAME", None),
    "context zero": (GOOD, ["--context", "0"], "--context 0 is not a valid number", None),
    "context negative": (GOOD, ["--context", "-3"], "--context -3 is not a valid number", None),
    "val fraction out of range": (GOOD, ["--val-fraction", "1.5"], "--val-fraction 1.5 is outside", None),
    "cast negative": (GOOD, ["--cast", "-1"], "--cast -1 is negative", None),
    "speaker column missing": (GOOD, ["--speaker-col", "who"], "--speaker-col 'who' is not a column", 1),
    "same speaker and line column": (GOOD, ["--speaker-col", "line", "--line-col", "line"], "same column", 1),
    "unreadable path": (None, [], "no such file", None),
    "directory instead of file": ("DIR", [], "is a directory", None),
}


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, file_name: str, expected: str, line: int | None) -> None:
    assert code != 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("charbot: error: ")
    assert file_name in lines[0]
    assert expected in lines[0], lines[0]
    if line is not None:
        assert f"{file_name}:{line}:" in lines[0]


def test_at_least_twenty_cases():
    assert len(CASES) >= 20


@pytest.mark.parametrize("name", list(CASES))
def test_malformed_input(name, tmp_path, capsys):
    content, extra, expected, line = CASES[name]
    script = tmp_path / "script.csv"
    if content == "DIR":
        script.mkdir()
    elif isinstance(content, str):
        script.write_text(content, encoding="utf-8")
    elif isinstance(content, bytes):
        script.write_bytes(content)
    out = tmp_path / "out"
    args = ["prepare", str(script), "--out", str(out), "--quiet"]
    if "--character" not in extra:
        args += ["--character", "Orla"]
    code, _, err = run_cli(args + extra, capsys)
    assert_one_line_error(code, err, "script.csv", expected, line)
    assert not out.exists()  # nothing written, not even the directory


def test_failure_keeps_an_existing_output_dir_untouched(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.jsonl").write_text("previous run\n")
    script = tmp_path / "script.csv"
    script.write_text('name,line\nPip,Hello.\nOrla,"never closed\n')
    code, _, err = run_cli(["prepare", str(script), "-c", "Orla", "--out", str(out)], capsys)
    assert code != 0 and "unterminated quote" in err
    assert sorted(p.name for p in out.iterdir()) == ["train.jsonl"]
    assert (out / "train.jsonl").read_text() == "previous run\n"


@pytest.mark.parametrize(("flag", "value", "kind"), [("--context", "seven", "integer"), ("--cast", "some", "integer"), ("--val-fraction", "x", "float")])
def test_number_flags_are_parsed_by_click(flag, value, kind, tmp_path, capsys):
    script = tmp_path / "script.csv"
    script.write_text(GOOD)
    out = tmp_path / "out"
    code, _, err = run_cli(["prepare", str(script), "-c", "Orla", "--out", str(out), flag, value], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"charbot: error: Invalid value for '{flag}': '{value}' is not a valid {kind}. — see `charbot prepare --help`"
    ]
    assert not out.exists()


NOBODY = 65534


def run_cli_as_nobody(args: list[str]) -> tuple[int, str]:
    """Root reads any file, so the CLI runs in a forked child that has dropped to nobody; (exit code, stderr)."""
    import rich.console  # noqa: F401  imported before the fork: what the CLI imports lazily need not be readable by nobody

    import charbot.cli.prepare  # noqa: F401

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            with os.fdopen(write_fd, "w") as fh:
                json.dump(_cli_as_nobody(args), fh)
        finally:
            os._exit(0)  # never return into the parent's pytest
    os.close(write_fd)
    with os.fdopen(read_fd) as fh:
        report = fh.read()
    os.waitpid(pid, 0)
    code, err = json.loads(report)
    return code, err


def _cli_as_nobody(args: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    try:
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main(args)
    except SystemExit as exc:
        return exc.code, err.getvalue()
    except BaseException:
        return -1, err.getvalue() + traceback.format_exc()
    return 0, err.getvalue()


def test_permission_denied(tmp_path, capsys):
    if os.geteuid() != 0:
        script = tmp_path / "script.csv"
        script.write_text(GOOD)
        script.chmod(0)
        code, _, err = run_cli(["prepare", str(script), "-c", "Orla", "--out", str(tmp_path / "o")], capsys)
        assert_one_line_error(code, err, "script.csv", "permission denied", None)
        return
    # User nobody must be able to enter the folder (root's tmp_path is closed to others), or the error would be the folder's.
    folder = Path(tempfile.mkdtemp())
    try:
        folder.chmod(0o755)
        script = folder / "script.csv"
        script.write_text(GOOD)
        script.chmod(0)
        code, err = run_cli_as_nobody(["prepare", str(script), "-c", "Orla", "--out", str(folder / "o"), "-q"])
        assert_one_line_error(code, err, "script.csv", "permission denied", None)
        assert not (folder / "o").exists()
    finally:
        shutil.rmtree(folder)


def test_out_is_a_file(tmp_path, capsys):
    script = tmp_path / "script.csv"
    script.write_text(GOOD)
    (tmp_path / "taken").write_text("x")
    code, _, err = run_cli(["prepare", str(script), "-c", "Orla", "--out", str(tmp_path / "taken")], capsys)
    assert_one_line_error(code, err, "taken", "exists and is not a directory", None)


def test_missing_character_and_script(tmp_path, capsys):
    script = tmp_path / "script.csv"
    script.write_text(GOOD)
    code, _, err = run_cli(["prepare", str(script)], capsys)
    assert_one_line_error(code, err, "script.csv", "--character is missing", None)
    code, _, err = run_cli(["prepare", "--character", "Orla"], capsys)
    assert code != 0 and "SCRIPT: missing" in err


def test_kaggle_errors(tmp_path, capsys, monkeypatch):
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "nokaggle"))
    code, _, err = run_cli(["prepare", "--kaggle", "not a handle", "-c", "Rick"], capsys)
    assert code != 0 and "is not OWNER/DATASET" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["prepare", "--kaggle", "andradaolteanu/rickmorty-scripts", "-c", "Rick", "--out", str(tmp_path / "o")], capsys)
    assert code != 0 and "no Kaggle credentials found" in err and "KAGGLE_KEY" in err
    assert not (tmp_path / "o").exists()


def test_real_entry_point_prints_no_traceback(tmp_path):
    script = tmp_path / "script.csv"
    script.write_bytes(b"\x00\x01binary")
    proc = subprocess.run(
        [sys.executable, "-m", "charbot", "prepare", str(script), "-c", "Orla", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("charbot: error: ") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
