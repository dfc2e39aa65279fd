"""Typed training config: YAML, command-line overrides, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from probclip.train import TrainConfig, load_config, parse_override_args

REPO = Path(__file__).resolve().parents[1]


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.001\ndata:\n  source: csv\n  paths: [a.csv]\n")
    cfg = load_config(path, ["--optim.lr", "2e-4", "--run.steps=7", "--loss.kwargs", "{vib_beta: 0}",
                             "--data.paths", "[x.csv, y.csv]"])
    assert cfg.optim.lr == 2e-4 and cfg.run.steps == 7
    assert cfg.loss.kwargs == {"vib_beta": 0} and cfg.data.paths == ["x.csv", "y.csv"]
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # the saved form round-trips


def test_unknown_keys_and_bad_values_are_named():
    with pytest.raises(ValueError, match=r"unknown keys \['lrr'\] in section 'optim'"):
        load_config(None, {"optim": {"lrr": 1}})
    with pytest.raises(ValueError, match=r"unknown config sections \['optimiser'\]"):
        load_config(None, {"optimiser": {}})
    with pytest.raises(ValueError, match=r"loss.name = 'infonce'.*'prolip'"):
        load_config(None, {"loss": {"name": "infonce"}})
    with pytest.raises(ValueError, match=r"masking.image_keep_ratio = 0"):
        load_config(None, {"masking": {"image_keep_ratio": 0}})
    with pytest.raises(ValueError, match=r"data.paths"):
        load_config(None, {"data": {"source": "webdataset"}})
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config("missing.yaml")


def test_override_syntax_errors():
    with pytest.raises(ValueError, match="--section.key"):
        parse_override_args(["--lr", "1"])
    with pytest.raises(ValueError, match="no value"):
        parse_override_args(["--optim.lr"])


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_are_valid(name):
    cfg = load_config(REPO / "configs" / name)
    assert cfg.run.steps >= 1


def test_probclip_train_command_resolves_config(tmp_path, capsys):
    from probclip.cli import main

    path = tmp_path / "c.yaml"
    path.write_text("run:\n  steps: 5\n")
    assert main(["train", "--config", str(path), "--optim.lr", "3e-4", "--resume", "latest", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["run"]["steps"] == 5 and printed["optim"]["lr"] == 3e-4 and printed["run"]["resume"] == "latest"
    assert main(["train", "--config", str(path), "--optim.nope", "1"]) == 2
    assert "nope" in capsys.readouterr().err


def test_probclip_train_reports_a_missing_shard(tmp_path, capsys):
    from probclip.cli import main

    code = main(
        [
            "train",
            "--data.source",
            "webdataset",
            "--data.paths",
            f"[{tmp_path}/0000.tar]",
            "--run.output_dir",
            str(tmp_path / "run"),
            "--model.name",
            "ProLIP-Tiny-Word",
            "--run.progress",
            "none",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "shard not found" in err and "0000.tar" in err


@pytest.mark.parametrize("content, message", [
    ("filepath,caption\n", "no data rows: the dataset is empty"),
    ("path,text\nimg/0.png,a square\n", "no image column 'filepath'"),
])
def test_probclip_train_reports_an_unusable_table_in_one_line(tmp_path, capsys, content, message):
    from probclip.cli import main

    table = tmp_path / "pairs.csv"
    table.write_text(content)
    code = main(["train", "--data.source", "csv", "--data.paths", f"[{table}]", "--run.output_dir",
                 str(tmp_path / "run"), "--model.name", "ProLIP-Tiny-Word", "--run.progress", "none",
                 "--run.tensorboard", "false"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("probclip train: DatasetError:") and message in err and str(table) in err
    assert "Traceback" not in err
