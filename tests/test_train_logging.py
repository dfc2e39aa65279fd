"""Run logging (plain lines, a progress bar, JSONL, TensorBoard) and atomic checkpoints."""

from __future__ import annotations

import json
import re

import pytest
import torch

import probclip
from probclip.train.checkpoint import (
    TRAINING_STATE,
    latest_checkpoint,
    prune_checkpoints,
    resolve_resume,
    save_checkpoint,
)
from probclip.train.run_log import RunLogger, format_seconds

RECORD = {"step": 10, "samples": 640, "lr": 1e-4, "loss": 1.2345, "ppcl": 1.0, "samples_per_s": 321.5}


def test_plain_lines_carry_step_loss_rate_and_eta(tmp_path, capsys):
    logger = RunLogger(tmp_path, total_steps=40, progress="plain", tensorboard=False)
    logger.step(RECORD, advance=10)
    logger.event("nonfinite", step=11, component="vib", values={"vib": float("nan")})
    logger.close()
    err = capsys.readouterr().err
    assert re.search(r"step 10/40  loss 1\.2345  lr 0\.0001  321\.5 samples/s  eta \d+:\d\d", err), err
    assert "[nonfinite] step=11, component=vib" in err
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert lines[0] == RECORD
    assert lines[1] == {"event": "nonfinite", "step": 11, "component": "vib", "values": {"vib": "nan"}}


def test_progress_bar_shows_loss_and_samples_per_second(tmp_path, capsys):
    logger = RunLogger(tmp_path, total_steps=40, progress="bar", tensorboard=False)
    logger.step(RECORD, advance=10)
    logger._bar.refresh()
    logger.close()
    err = capsys.readouterr().err
    assert "10/40" in err and "loss=1.2345" in err and "sps=321.5" in err
    assert re.search(r"<\d+:\d\d", err), err  # tqdm's remaining-time estimate
    assert "step 10/40" not in err  # no plain lines under a bar


def test_progress_none_is_silent_and_other_ranks_write_nothing(tmp_path, capsys):
    quiet = RunLogger(tmp_path / "a", total_steps=5, progress="none", tensorboard=False)
    quiet.step(RECORD, advance=1)
    quiet.close()
    other_rank = RunLogger(tmp_path / "b", total_steps=5, progress="plain", tensorboard=True, enabled=False)
    other_rank.step(RECORD, advance=1)
    other_rank.event("checkpoint", step=1)
    other_rank.close()
    assert capsys.readouterr().err == ""
    assert (tmp_path / "a" / "log.jsonl").is_file() and not (tmp_path / "b").exists()


def test_tensorboard_scalars_of_every_logged_number(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = RunLogger(tmp_path, total_steps=20, progress="none", tensorboard=True)
    logger.step(RECORD, advance=10)
    logger.step({**RECORD, "step": 20, "loss": 0.5}, advance=10)
    logger.scalars("eval", {"retrieval/set/i2t/r1": 0.25, "note": "text"}, 20)
    logger.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/ppcl", "train/lr", "train/samples_per_s", "eval/retrieval/set/i2t/r1"} <= tags
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("train/loss")] == [(10, 1.2345), (20, 0.5)]


def test_format_seconds():
    assert format_seconds(3725) == "1:02:05" and format_seconds(65) == "1:05" and format_seconds(float("inf")) == "?"


# --------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def tiny():
    return probclip.create_model("ProLIP-Tiny-Word", vision={"layers": 1}, text={"layers": 1})


def test_checkpoint_is_loadable_and_unfinished_writes_are_ignored(tmp_path, tiny):
    path = save_checkpoint(tmp_path, 2, tiny, {"step": 2}, "run: {}\n")
    assert {"config.json", "model.safetensors", TRAINING_STATE, "train_config.yaml"} <= {p.name for p in path.iterdir()}
    loaded, _ = probclip.create_model_from_pretrained(path)
    assert all(torch.equal(a, b) for a, b in zip(tiny.state_dict().values(), loaded.state_dict().values()))
    root = tmp_path / "checkpoints"
    assert (root / "latest").read_text().strip() == "step_00000002"
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary left behind
    # a run killed while writing step 4 leaves a temporary directory, or one without its training state
    (root / ".step_00000004.tmp-deadbeef").mkdir()
    (root / ".step_00000004.tmp-deadbeef" / "config.json").write_text("{}")
    (root / "step_00000006").mkdir()
    assert latest_checkpoint(tmp_path) == path
    (root / "latest").unlink()
    assert latest_checkpoint(tmp_path) == path
    assert resolve_resume("latest", tmp_path) == path
    with pytest.raises(FileNotFoundError, match="step_00000006.*not a checkpoint directory"):
        resolve_resume(str(root / "step_00000006"), tmp_path)


def test_latest_points_at_the_newest_and_pruning_keeps_it(tmp_path, tiny):
    for step in (2, 4, 6):
        save_checkpoint(tmp_path, step, tiny, {"step": step}, "")
    assert latest_checkpoint(tmp_path).name == "step_00000006"
    assert [p.name for p in prune_checkpoints(tmp_path, 2)] == ["step_00000002"]
    again = save_checkpoint(tmp_path, 6, tiny, {"step": 6, "again": True}, "")  # rewriting a step replaces it
    assert torch.load(again / TRAINING_STATE, weights_only=False)["again"]
    assert latest_checkpoint(tmp_path) == again
    assert resolve_resume("latest", tmp_path / "elsewhere") is None  # no checkpoint yet: start at step 0
