"""Checkpoints of a training run, written atomically.

Layout under ``<output_dir>/checkpoints/``::

    step_000100/
        config.json, model.safetensors   the model (``model.save_pretrained``; loads with create_model_from_pretrained)
        training_state.pt                optimizer, schedule, step, RNG states, data position of every rank
        train_config.yaml                the resolved training configuration
    latest                               a text file naming the newest complete checkpoint directory

A checkpoint is first written to a temporary directory, then renamed into place; ``latest`` is replaced with
``os.replace``. A run killed at any moment leaves either the previous or the new checkpoint, never half of one; a
write that fails (a full disk) removes its temporary directory and leaves the previous checkpoint as it was.

Nothing loaded from a checkpoint runs code: ``training_state.pt`` holds only tensors and plain Python values
(the NumPy RNG state is stored as a list) and is loaded with ``torch.load(weights_only=True)``; the model is in
safetensors. ``latest`` must name a checkpoint directory beside it; one that names anything else, something missing
or something incomplete is ignored with a warning and the newest intact checkpoint is used.
Checkpoints are never written from non-finite weights, and pruning keeps the newest checkpoint with finite weights.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError

from ..errors import InputError
from ..models.loading import load_safetensors

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
    "CheckpointError",
    "NonFiniteWeightsError",
    "is_intact_checkpoint",
    "weights_are_finite",
    "samples_before",
    "load_resume_state",
]

CHECKPOINT_DIR = "checkpoints"
TRAINING_STATE = "training_state.pt"
LATEST = "latest"


_CHECKPOINT_NAME = re.compile(r"step_\d{8}")
_CHECKPOINT_FILES = ("config.json", "model.safetensors", TRAINING_STATE)


class CheckpointError(InputError):
    """A checkpoint cannot be written or read safely (the message names the file or directory)."""


class NonFiniteWeightsError(CheckpointError):
    """The model's weights hold NaN or infinity: no checkpoint is written from them."""


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace`` (the temporary file is removed when
    the write fails)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def capture_rng_state() -> dict:
    """Python, NumPy, torch CPU (and CUDA, if initialised) random generator states, as tensors and plain values
    (loadable with ``weights_only=True``)."""
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [str(kind), keys.astype(np.int64).tolist(), int(position), int(has_gauss), float(cached_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of ``capture_rng_state``."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    kind, keys, position, has_gauss, cached_gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached_gauss))
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


def weights_are_finite(model_or_state: Any) -> bool:
    """True when every floating-point tensor of a module's ``state_dict()`` (or of a state dict) is finite."""
    state = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") else model_or_state
    checks = [torch.isfinite(v).all() for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    return bool(torch.stack([c.to(checks[0].device) for c in checks]).all()) if checks else True  # one sync


def save_checkpoint(output_dir: str | Path, step: int, model, training_state: dict[str, Any], config_yaml: str) -> Path:
    """Write ``checkpoints/step_XXXXXXXX`` atomically and point ``latest`` at it; returns its path.

    ``model`` must have ``save_pretrained``; ``training_state`` is saved with ``torch.save`` and must hold only
    tensors and plain values. Raises ``NonFiniteWeightsError`` (nothing written) when the weights are not finite,
    and ``CheckpointError`` naming the directory when writing fails (a full disk, no permission): the temporary
    directory is removed and the previous checkpoint and ``latest`` are left as they were.
    """
    root = Path(output_dir) / CHECKPOINT_DIR
    final = root / checkpoint_name(step)
    if not weights_are_finite(model):
        raise NonFiniteWeightsError(f"not writing {final}: the model's weights hold NaN or infinity at step {step}")
    tmp = root / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        root.mkdir(parents=True, exist_ok=True)
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
    except (OSError, RuntimeError, SafetensorError) as err:  # torch.save reports a full disk as a RuntimeError
        previous = latest_checkpoint(output_dir)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else " ".join(str(err).split())[:200]
        raise CheckpointError(
            f"cannot write checkpoint {final}: {reason} ({_free_space(root)}); "
            f"{'the previous checkpoint ' + str(previous) + ' is intact' if previous else 'no earlier checkpoint'}"
        ) from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _free_space(path: Path) -> str:
    for candidate in (path, *path.parents):
        try:
            return f"{shutil.disk_usage(candidate).free / 1e6:.1f} MB free on its file system"
        except OSError:
            continue
    return "free space unknown"


def is_intact_checkpoint(path: Path) -> bool:
    """True when ``path`` is a directory holding a checkpoint's three files, none of them empty."""
    try:
        return path.is_dir() and all((path / name).is_file() and (path / name).stat().st_size > 0
                                     for name in _CHECKPOINT_FILES)
    except OSError:
        return False


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest intact checkpoint directory of a run (the one ``latest`` names, when that is valid), or None.

    A ``latest`` that names something other than a ``step_XXXXXXXX`` directory beside it (a path, ``..``), or a
    checkpoint that is missing or incomplete, or that cannot be read, is ignored with a warning.
    """
    root = Path(output_dir) / CHECKPOINT_DIR
    pointer = root / LATEST
    complete = sorted(p for p in root.glob("step_*") if is_intact_checkpoint(p)) if root.is_dir() else []
    newest = complete[-1] if complete else None
    if pointer.is_file():
        try:
            named = pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            named, problem = None, f"cannot be read ({err})"
        else:
            problem = None
            if not _CHECKPOINT_NAME.fullmatch(named):
                problem = f"names {named!r}, which is not a checkpoint directory beside it"
            elif not is_intact_checkpoint(root / named):
                problem = f"names {named}, which is missing or incomplete"
        if problem is None:
            return root / named
        warnings.warn(f"{pointer} {problem}; using the newest intact checkpoint "
                      f"{newest if newest else '(none: the run starts at step 0)'}", RuntimeWarning, stacklevel=2)
    return newest


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


def load_resume_state(resume: str | None, output_dir: str | Path) -> tuple[Path | None, dict | None]:
    """``run.resume`` -> ``(checkpoint directory, its training state)``, or ``(None, None)`` for a fresh start.

    For ``latest``, a checkpoint whose training state cannot be loaded (truncated, or refused as crafted) is
    skipped with a warning in favour of the next older intact one; ``CheckpointError`` when none loads. An explicit
    directory must load.
    """
    if resume != "latest":
        chosen = resolve_resume(resume, output_dir)
        return (chosen, load_training_state(chosen)) if chosen is not None else (None, None)
    first = latest_checkpoint(output_dir)
    if first is None:
        return None, None
    root = Path(output_dir) / CHECKPOINT_DIR
    older = sorted((p for p in root.glob("step_*") if p != first and p.name < first.name and is_intact_checkpoint(p)),
                   reverse=True)
    problems = []
    for candidate in [first, *older]:
        try:
            state = load_training_state(candidate)
        except CheckpointError as err:
            problems.append(str(err))
            continue
        if problems:
            warnings.warn(f"resuming from {candidate.name}, the newest checkpoint that loads: {'; '.join(problems)}",
                          RuntimeWarning, stacklevel=2)
        return candidate, state
    raise CheckpointError(problems[0] if len(problems) == 1 else
                          f"no checkpoint of {output_dir} can be resumed: {'; '.join(problems)}")


def load_training_state(checkpoint_dir: str | Path) -> dict:
    """The ``training_state.pt`` dict of a checkpoint (loaded on the CPU, ``weights_only=True``: tensors and plain
    values only, so loading runs no code). Raises ``CheckpointError`` naming the file when it holds anything else
    (a crafted or foreign pickle) or cannot be read."""
    path = Path(checkpoint_dir) / TRAINING_STATE
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # refused below if it matters
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        first = next((line for line in lines if "Unsupported" in line or "global" in line.lower()),
                     lines[0] if lines else type(err).__name__)
        raise CheckpointError(
            f"refusing to load {path}: it holds objects other than tensors and plain values, which could run code "
            f"when loaded ({first[:200]}); only training states written by probclip are accepted") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {path} (truncated or not a training state): {err}") from err
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path} is not a probclip training state (no 'step' entry)")
    return state


def _newest_finite(checkpoints: list[Path]) -> Path | None:
    for path in reversed(checkpoints):
        try:
            if is_intact_checkpoint(path) and weights_are_finite(load_safetensors(path / "model.safetensors")):
                return path
        except InputError:
            continue
    return None


def samples_before(state: dict | None, batch_size: int) -> int:
    """``samples - step * batch_size`` of a resumed training state (0 for a fresh run): the offset that keeps the
    count of samples seen exact when the global batch size changed at the resume."""
    if not state:
        return 0
    return int(state.get("samples", int(state["step"]) * batch_size)) - int(state["step"]) * batch_size


def prune_checkpoints(output_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest checkpoints; never the one ``latest`` names nor the newest one whose
    weights are all finite. Returns those deleted."""
    root = Path(output_dir) / CHECKPOINT_DIR
    latest = latest_checkpoint(output_dir)
    complete = sorted(p for p in root.glob("step_*") if p.is_dir())
    doomed = [p for p in complete[:-keep_last] if p != latest] if keep_last > 0 else []
    if doomed:
        keep = _newest_finite(complete)
        doomed = [p for p in doomed if p != keep]
    for path in doomed:
        shutil.rmtree(path)
    return doomed
