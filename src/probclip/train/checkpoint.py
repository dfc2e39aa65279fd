"""Checkpoints of a training run, written atomically.

Layout under ``<output_dir>/checkpoints/``::

    step_000100/
        config.json, model.safetensors   the model (``model.save_pretrained``; loads with create_model_from_pretrained)
        training_state.pt                optimizer, schedule, step, RNG states, data position of every rank
        train_config.yaml                the resolved training configuration
    latest                               a text file naming the newest complete checkpoint directory

A checkpoint is first written to a temporary directory, then renamed into place; ``latest`` is replaced with
``os.replace``. A run killed at any moment leaves either the previous or the new checkpoint, never half of one.
"""

from __future__ import annotations

import os
import random
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_DIR",
    "TRAINING_STATE",
    "checkpoint_name",
    "save_checkpoint",
    "latest_checkpoint",
    "resolve_resume",
    "load_training_state",
    "capture_rng_state",
    "restore_rng_state",
    "prune_checkpoints",
    "atomic_write_text",
]

CHECKPOINT_DIR = "checkpoints"
TRAINING_STATE = "training_state.pt"
LATEST = "latest"


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def capture_rng_state() -> dict:
    """Python, NumPy, torch CPU (and CUDA, if initialised) random generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of ``capture_rng_state``."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(output_dir: str | Path, step: int, model, training_state: dict[str, Any], config_yaml: str) -> Path:
    """Write ``checkpoints/step_XXXXXXXX`` atomically and point ``latest`` at it; returns its path.

    ``model`` must have ``save_pretrained``; ``training_state`` is saved with ``torch.save``.
    """
    root = Path(output_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    model.save_pretrained(tmp)
    torch.save(training_state, tmp / TRAINING_STATE)
    (tmp / "train_config.yaml").write_text(config_yaml, encoding="utf-8")
    for item in tmp.iterdir():
        with open(item, "rb") as handle:
            os.fsync(handle.fileno())
    _fsync_dir(tmp)
    if final.exists():
        trash = root / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    atomic_write_text(root / LATEST, final.name + "\n")
    return final


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint directory of a run, or None when there is none."""
    root = Path(output_dir) / CHECKPOINT_DIR
    pointer = root / LATEST
    if pointer.is_file():
        candidate = root / pointer.read_text(encoding="utf-8").strip()
        if (candidate / TRAINING_STATE).is_file():
            return candidate
    complete = sorted(p for p in root.glob("step_*") if (p / TRAINING_STATE).is_file()) if root.is_dir() else []
    return complete[-1] if complete else None


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """``run.resume`` -> a checkpoint directory: None, ``latest`` (None if the run has no checkpoint yet), or a path.

    Raises ``FileNotFoundError`` for a path that is not a checkpoint directory.
    """
    if resume is None:
        return None
    if resume == "latest":
        return latest_checkpoint(output_dir)
    path = Path(resume)
    if not (path / TRAINING_STATE).is_file():
        raise FileNotFoundError(
            f"run.resume={resume!r} is not a checkpoint directory (no {TRAINING_STATE}); use 'latest' or a "
            f"directory like {Path(output_dir) / CHECKPOINT_DIR / checkpoint_name(100)}"
        )
    return path


def load_training_state(checkpoint_dir: str | Path) -> dict:
    """The ``training_state.pt`` dict of a checkpoint (loaded on the CPU)."""
    return torch.load(Path(checkpoint_dir) / TRAINING_STATE, map_location="cpu", weights_only=False)


def prune_checkpoints(output_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest checkpoints (never the one ``latest`` names); returns those deleted."""
    root = Path(output_dir) / CHECKPOINT_DIR
    latest = latest_checkpoint(output_dir)
    complete = sorted(p for p in root.glob("step_*") if p.is_dir())
    doomed = [p for p in complete[:-keep_last] if p != latest] if keep_last > 0 else []
    for path in doomed:
        shutil.rmtree(path)
    return doomed
