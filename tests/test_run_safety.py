"""No run lost, no code executed: crafted checkpoints, the ``latest`` pointer, concurrent runs, a second run into an
existing directory, resuming with a changed configuration, a diverging run, a full disk, a failed conversion."""

from __future__ import annotations

import errno
import json
import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import probclip
from probclip.cli import main as probclip_main
from probclip.train import TrainConfig, train
from probclip.train import checkpoint as checkpoint_module
from probclip.train.checkpoint import (
    TRAINING_STATE,
    CheckpointError,
    capture_rng_state,
    latest_checkpoint,
    load_training_state,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
)
from probclip.train.run_dir import LOCK_FILE, RunDirectoryError, RunLock
from test_data_readers import make_csv_dataset
from test_train_loop import tiny_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return make_csv_dataset(tmp_path_factory.mktemp("pairs"), 24)


@pytest.fixture(scope="module")
def tiny():
    return probclip.create_model("ProLIP-Tiny-Word", vision={"layers": 1}, text={"layers": 1})


def _checkpoints(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))


def _temporaries(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.rglob(".*tmp*")) + sorted(p.name for p in run_dir.rglob(".*old*"))


# ----------------------------------------------------------------------------------------- no code execution
class _TouchesAFile:
    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_crafted_training_state_is_refused_and_runs_nothing(tmp_path, tiny, writer):
    witness = tmp_path / "pwned"
    ckpt = save_checkpoint(tmp_path / "run", 2, tiny, {"step": 2}, "")
    crafted = {"step": 2, "optimizer": _TouchesAFile(witness)}
    if writer == "torch.save":
        torch.save(crafted, ckpt / TRAINING_STATE)
    else:
        (ckpt / TRAINING_STATE).write_bytes(pickle.dumps(crafted))
    with pytest.raises(CheckpointError, match=rf"refusing to load .*step_00000002/{TRAINING_STATE}"):
        load_training_state(ckpt)
    assert not witness.exists()
    # the same through the command line: one line naming the file, exit status 1, nothing executed
    code = probclip_main(["train", "--run.output_dir", str(tmp_path / "run"), "--resume", "latest",
                          "--run.progress", "none", "--model.name", "ProLIP-Tiny-Word"])
    assert code == 1 and not witness.exists()


def test_training_state_holds_only_plain_values_and_restores_every_generator(tmp_path, tiny):
    import random

    import numpy as np

    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    state = {"step": 2, "rng": [capture_rng_state()]}
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    ckpt = save_checkpoint(tmp_path, 2, tiny, state, "")
    loaded = torch.load(ckpt / TRAINING_STATE, weights_only=True)  # would raise on anything but plain values
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    restore_rng_state(loaded["rng"][0])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


@pytest.mark.parametrize("pointer", ["../../elsewhere", "/etc", "step_00000009", "step_00000004\x00", b"\xff\xfe"])
def test_a_bad_latest_pointer_falls_back_to_the_newest_intact_checkpoint(tmp_path, tiny, pointer):
    for step in (2, 4):
        save_checkpoint(tmp_path, step, tiny, {"step": step}, "")
    (tmp_path / "checkpoints" / "step_00000004" / "model.safetensors").unlink()  # step 4 is incomplete
    latest = tmp_path / "checkpoints" / "latest"
    latest.write_bytes(pointer if isinstance(pointer, bytes) else pointer.encode())
    with pytest.warns(RuntimeWarning, match="newest intact checkpoint .*step_00000002"):
        assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_00000002"


def test_resuming_from_outside_the_run_directory_says_so(tmp_path, table, capsys):
    first = TrainConfig.from_dict(tiny_config(tmp_path / "a", table, run={"steps": 2, "save_every": 0}))
    source = train(first).checkpoint
    moved = TrainConfig.from_dict(tiny_config(tmp_path / "b", table, run={"steps": 3, "save_every": 0,
                                                                          "resume": str(source)}))
    capsys.readouterr()
    result = train(moved)
    assert result.steps == 3 and result.checkpoint.parent == tmp_path / "b" / "run" / "checkpoints"
    assert f"resuming from {source}, outside the run directory" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ concurrency
_HOLD_LOCK = """
import sys, time
from probclip.train.run_dir import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_run_on_a_locked_directory_stops_with_one_line(tmp_path, table):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(run_dir)], env=env, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        owner = json.loads((run_dir / LOCK_FILE).read_text())
        assert owner["pid"] == holder.pid and owner["host"] == socket.gethostname()
        config_path = tmp_path / "c.yaml"
        config_path.write_text(yaml.safe_dump(tiny_config(tmp_path, table, run={"progress": "none"})))
        done = subprocess.run([sys.executable, "-m", "probclip.cli", "train", "--config", str(config_path)], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert done.stderr.splitlines() == [done.stderr.strip()] and f"in use by process {holder.pid}" in done.stderr
        assert not (run_dir / "checkpoints").exists() and not (run_dir / "train_config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock is stale and the next run takes it over with a warning
    with pytest.warns(RuntimeWarning, match=f"stale lock .*process {holder.pid}"):
        result = train(TrainConfig.from_dict(tiny_config(tmp_path, table, run={"steps": 2, "save_every": 0})))
    assert result.steps == 2 and not (run_dir / LOCK_FILE).exists()


def test_the_lock_is_exclusive_within_a_process_and_released(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunDirectoryError, match="in use by process"):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_FILE).exists()
    RunLock(tmp_path).acquire()  # a lock of this process that no live RunLock holds is stale: taken over
    with pytest.warns(RuntimeWarning, match="stale lock"):
        RunLock(tmp_path).acquire().release()


# -------------------------------------------------------------------------------- a second run, a changed config
def test_a_second_run_into_a_directory_with_checkpoints_is_refused(tmp_path, table):
    config = tiny_config(tmp_path, table, run={"steps": 2, "save_every": 0})
    train(TrainConfig.from_dict(config))
    run_dir = tmp_path / "run"
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != "log.jsonl"}
    with pytest.raises(RunDirectoryError, match="already holds a run .*--resume latest.*--run.overwrite true"):
        train(TrainConfig.from_dict(config))
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != "log.jsonl"} == before
    config["run"]["overwrite"] = True
    config["run"]["steps"] = 1
    assert train(TrainConfig.from_dict(config)).steps == 1
    assert _checkpoints(run_dir) == ["step_00000001"]


def test_resuming_with_a_changed_batch_size_is_refused_unless_allowed(tmp_path, table):
    config = tiny_config(tmp_path, table, run={"steps": 2, "save_every": 0})
    train(TrainConfig.from_dict(config))
    deeper = {"overrides": {"vision": {"layers": 2}, "text": {"layers": 1}}}
    changed = tiny_config(tmp_path, table, run={"steps": 4, "save_every": 0, "resume": "latest"},
                          data={"batch_size": 16}, model=deeper)
    with pytest.raises(RunDirectoryError, match=r"model.overrides.*data.batch_size: 8 -> 16.*allow_config_change"):
        train(TrainConfig.from_dict(changed))
    allowed = tiny_config(tmp_path, table, run={"steps": 4, "save_every": 0, "resume": "latest",
                                                "allow_config_change": True}, data={"batch_size": 16})
    result = train(TrainConfig.from_dict(allowed))
    assert result.samples == 2 * 8 + 2 * 16
    assert load_training_state(result.checkpoint)["samples"] == 48
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["samples"] for r in records if r.get("step") in (3, 4) and "loss" in r] == [32, 48]


# --------------------------------------------------------------------------------------------- a diverging run
def test_a_diverging_run_keeps_its_last_finite_checkpoint(tmp_path, table):
    def poison(info):
        if info.step == 2:
            with torch.no_grad():
                info.model.visual.head.mean.weight.fill_(float("nan"))

    config = TrainConfig.from_dict(tiny_config(tmp_path, table, run={"steps": 6, "save_every": 1, "keep_last": 1,
                                                                     "max_nonfinite_steps": 10}))
    result = train(config, callbacks=[poison])
    run_dir = tmp_path / "run"
    # poisoned after step 2's update, before its checkpoint: step 1 is the last checkpoint with finite weights
    assert _checkpoints(run_dir) == ["step_00000001"]
    assert latest_checkpoint(run_dir).name == "step_00000001" and result.checkpoint is None
    model, _ = probclip.create_model_from_pretrained(run_dir / "checkpoints" / "step_00000001")
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    events = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e.get("event") == "checkpoint_refused"] == [2, 3, 4, 5, 6]


def test_pruning_never_removes_the_newest_finite_checkpoint(tmp_path, tiny):
    for step in (2, 4):
        save_checkpoint(tmp_path, step, tiny, {"step": step}, "")
    # a checkpoint with non-finite weights written by other means, and named by latest
    broken = probclip.create_model("ProLIP-Tiny-Word", vision={"layers": 1}, text={"layers": 1})
    with torch.no_grad():
        broken.logit_bias.fill_(float("inf"))
    bad = tmp_path / "checkpoints" / "step_00000006"
    broken.save_pretrained(bad)
    torch.save({"step": 6}, bad / TRAINING_STATE)
    (tmp_path / "checkpoints" / "latest").write_text("step_00000006\n")
    assert [p.name for p in prune_checkpoints(tmp_path, 1)] == ["step_00000002"]
    assert _checkpoints(tmp_path) == ["step_00000004", "step_00000006"]
    with pytest.raises(CheckpointError, match="NaN or infinity"):
        save_checkpoint(tmp_path, 8, broken, {"step": 8}, "")
    assert _checkpoints(tmp_path) == ["step_00000004", "step_00000006"] and not _temporaries(tmp_path)


# ------------------------------------------------------------------------------------------------- a full disk
def test_a_full_disk_ends_the_run_with_one_line_and_keeps_the_previous_checkpoint(tmp_path, table, monkeypatch,
                                                                                  capsys):
    real_save = torch.save
    calls = []

    def save_until_the_disk_fills(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) >= 2:
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_until_the_disk_fills)
    config_path = tmp_path / "c.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config(tmp_path, table, run={"steps": 4, "save_every": 2,
                                                                            "progress": "none"})))
    capsys.readouterr()
    assert probclip_main(["train", "--config", str(config_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "step_00000004" in err
    assert "previous checkpoint" in err and "step_00000002 is intact" in err
    run_dir = tmp_path / "run"
    assert _checkpoints(run_dir) == ["step_00000002"] and latest_checkpoint(run_dir).name == "step_00000002"
    assert not _temporaries(run_dir) and not (run_dir / LOCK_FILE).exists()
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    assert load_training_state(run_dir / "checkpoints" / "step_00000002")["step"] == 2
    started = time.time()
    resumed = train(TrainConfig.from_dict(tiny_config(tmp_path, table, run={"steps": 4, "save_every": 2,
                                                                            "resume": "latest"})))
    assert resumed.steps == 4 and time.time() - started < 120


# ------------------------------------------------------------------------------------------- a failed conversion
def test_a_failed_in_place_conversion_leaves_the_source_untouched(tmp_path, capsys):
    source = tmp_path / "model"
    probclip.create_model("ProLIP-Tiny-Word").save_pretrained(source)  # a word tokenizer: no released layout
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    assert probclip_main(["models", "convert", str(source), str(source), "--to", "released"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "released format" in err
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary directory left
    assert probclip_main(["models", "convert", str(source), str(source), "--to", "probclip"]) == 0  # in place: fine
    assert probclip.create_model_from_pretrained(source)[0].config.name == "ProLIP-Tiny-Word"


def _mount_small_tmpfs(path: Path, size_kb: int) -> bool:
    """Mount a tmpfs of ``size_kb`` at ``path`` (needs the privilege to mount; False where the platform refuses)."""
    path.mkdir(parents=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def test_a_really_full_disk_on_a_small_tmpfs(tmp_path, table, monkeypatch, capsys):
    """The real thing where the platform lets a test mount a tmpfs: room for one checkpoint (1.7 MB), not two. Where
    it does not, the write of the second checkpoint fails with a simulated ENOSPC instead."""
    disk = tmp_path / "disk"
    mounted = _mount_small_tmpfs(disk, 2600)
    if not mounted:
        real_save, calls = torch.save, []

        def fill_up(obj, path, *args, **kwargs):
            calls.append(path)
            if len(calls) >= 2:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            return real_save(obj, path, *args, **kwargs)

        monkeypatch.setattr(checkpoint_module.torch, "save", fill_up)
    try:
        config_path = tmp_path / "c.yaml"
        config = tiny_config(disk, table, run={"steps": 4, "save_every": 2, "keep_last": 1, "progress": "none"})
        config_path.write_text(yaml.safe_dump(config))
        capsys.readouterr()
        assert probclip_main(["train", "--config", str(config_path)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cannot write checkpoint" in err and "step_00000004" in err, err
        assert "MB free on its file system" in err and "step_00000002 is intact" in err, err
        run_dir = disk / "run"
        assert _checkpoints(run_dir) == ["step_00000002"] and latest_checkpoint(run_dir).name == "step_00000002"
        assert not _temporaries(run_dir) and not (run_dir / LOCK_FILE).exists()
        assert load_training_state(run_dir / "checkpoints" / "step_00000002")["step"] == 2
        model, _ = probclip.create_model_from_pretrained(run_dir / "checkpoints" / "step_00000002")
        assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], capture_output=True, timeout=30)


def test_latest_falls_back_past_a_checkpoint_whose_state_cannot_be_loaded(tmp_path, tiny):
    from probclip.train.checkpoint import load_resume_state

    for step in (2, 4, 6):
        save_checkpoint(tmp_path, step, tiny, {"step": step}, "")
    (tmp_path / "checkpoints" / "step_00000006" / TRAINING_STATE).write_bytes(b"PK\x03\x04 cut short")
    torch.save({"step": 4, "x": _TouchesAFile(tmp_path / "pwned")}, tmp_path / "checkpoints" / "step_00000004" /
               TRAINING_STATE)
    with pytest.warns(RuntimeWarning, match="resuming from step_00000002.*step_00000006.*step_00000004"):
        chosen, state = load_resume_state("latest", tmp_path)
    assert chosen.name == "step_00000002" and state["step"] == 2 and not (tmp_path / "pwned").exists()
    with pytest.raises(CheckpointError, match="step_00000004"):
        load_resume_state(str(tmp_path / "checkpoints" / "step_00000004"), tmp_path)  # an explicit one must load
