"""``probclip models``: list, show, convert."""

import json

import torch
from safetensors.torch import load_file

from probclip.models.cli import main


def test_list_and_show(capsys):
    assert main(["list", "--names-only"]) == 0
    names = capsys.readouterr().out.split()
    assert "ProLIP-Tiny" in names and "ViT-B-16-ProLIP" in names
    assert main(["show", "ProLIP-Tiny"]) == 0
    assert json.loads(capsys.readouterr().out)["vision"]["image_size"] == 32


def test_unknown_source_is_an_error(capsys):
    assert main(["show", "no-such-model"]) == 1
    assert "no-such-model" in capsys.readouterr().err


def test_convert_released_to_probclip_and_back_is_lossless(official_dir, tmp_path, capsys):
    source = official_dir / "tiny-official"
    assert main(["convert", str(source), str(tmp_path / "ours"), "--to", "probclip"]) == 0
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["released_compat"] is True
    assert main(["convert", str(tmp_path / "ours"), str(tmp_path / "back"), "--to", "released"]) == 0
    original = load_file(str(source / "model.safetensors"))
    back = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert set(back) == set(original) and all(torch.equal(back[k], original[k]) for k in original)
