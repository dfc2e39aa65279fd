"""Terminal safety: captions, file names and messages printed by the command line have their control characters
escaped (``probclip search`` tables, ``probclip embed`` skip lines, one-line errors and warnings)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import probclip
from probclip.cli import main, run_command
from probclip.terminal import printable

#: Sets the window title, clears the screen, rings the bell, reverses the text direction, a C1 CSI.
HOSTILE = "\x1b]0;owned\x07\x1b[2J\x1b[31mred\u202etxt.exe\x9b6n"


def _raw_controls(text: str) -> list[str]:
    return [c for c in text if (ord(c) < 32 and c != "\n") or 0x7F <= ord(c) <= 0x9F or c == "\u202e"]


def test_printable_escapes_controls_and_keeps_the_rest():
    assert printable("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert printable("tab\there\nnew\rline\x00") == "tab\\there\\nnew\\rline\\x00"
    assert printable("\x7f\x85\x9b\u202e\u2066\u2028") == "\\x7f\\x85\\x9b\\u202e\\u2066\\u2028"
    assert printable("caf\udce9.png") == "caf\\udce9.png"  # a non-UTF-8 byte of a file name
    assert printable("un café, 猫, emoji 🐈 and a back\\slash") == "un café, 猫, emoji 🐈 and a back\\slash"
    assert printable("two\nlines\x1b", keep_newlines=True) == "two\nlines\\x1b"
    assert _raw_controls(printable(HOSTILE)) == []


@pytest.fixture(scope="module")
def hostile_collection(tmp_path_factory) -> Path:
    from probclip.search import build_index, embed_collection

    root = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    probclip.create_model("ProLIP-Tiny").save_pretrained(root / "model")
    (root / "captions.txt").write_text(f"a red square {HOSTILE}\na blue circle\n", encoding="utf-8")
    embed_collection(str(root / "model"), root / "captions.txt", root / "c", num_workers=0, progress=False)
    build_index(root / "c", kind="flat", progress=False)
    return root


def test_search_prints_hostile_captions_escaped(hostile_collection, capsys):
    code = main(["search", str(hostile_collection / "c"), "--modality", "text", "--text", "a red square", "--k", "2"])
    out = capsys.readouterr().out
    assert code == 0
    assert _raw_controls(out) == [], out
    assert "a red square \\x1b]0;owned\\x07\\x1b[2J\\x1b[31mred\\u202etxt.exe\\x9b6n" in out
    code = main(["search", str(hostile_collection / "c"), "--modality", "text", "--text", "a red square", "--json"])
    out = capsys.readouterr().out
    assert code == 0 and _raw_controls(out) == [] and "\\u001b]0;owned" in out  # JSON escapes them itself


def test_embed_skip_lines_and_errors_escape_file_names(tmp_path, capsys):
    torch.manual_seed(0)
    probclip.create_model("ProLIP-Tiny").save_pretrained(tmp_path / "model")
    data = tmp_path / "data"
    data.mkdir()
    (data / "bad\x1b[2J.png").write_bytes(b"not a png")
    (data / "bad\x1b[2J.txt").write_text("a caption\n")
    code = main(["embed", "--model", str(tmp_path / "model"), "--data", str(data), "--out", str(tmp_path / "c"),
                 "--num-workers", "0", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "skipped " in captured.out and "bad\\x1b[2J.png" in captured.out
    assert _raw_controls(captured.out) == [] and _raw_controls(captured.err) == []
    code = main(["search", str(tmp_path / f"absent{HOSTILE}"), "--text", "a"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and _raw_controls(err) == [] and "absent\\x1b]0;owned" in err


def test_warnings_and_errors_of_any_command_are_escaped(capsys):
    def command(argv):
        warnings.warn(f"odd caption {HOSTILE}", RuntimeWarning, stacklevel=1)
        raise probclip.errors.InputError(f"bad file {HOSTILE}")

    assert run_command("demo", command, []) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and _raw_controls(err) == []
    assert "warning: RuntimeWarning: odd caption \\x1b]0;owned" in err and "bad file \\x1b]0;owned" in err
