"""Guarding a run directory: one writer at a time, no silent restart over a finished or running run, and no resume
with a configuration that changes what the checkpoint means.

- :class:`RunLock`: ``<output_dir>/run.lock`` holds the owner's pid, host and start time. A second run on the
  same directory stops with :class:`RunDirectoryError`; a lock left by a process that no longer runs (same host)
  is taken over with a warning.
- :func:`check_fresh_start`: starting without ``--resume`` in a directory that holds checkpoints (or the
  ``train_config.yaml`` of an earlier run) is refused unless ``run.overwrite`` is true.
- :func:`config_differences`: what differs between a checkpoint's ``train_config.yaml`` and the new config in the
  keys that define the checkpoint (model, batch size, data source and shard list, processes, workers).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
import uuid
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ..data.webdataset import expand_shard_urls
from ..errors import UsageError
from .checkpoint import CHECKPOINT_DIR

__all__ = [
    "LOCK_FILE",
    "RUN_FILES",
    "MEANING_KEYS",
    "RunDirectoryError",
    "RunLock",
    "check_fresh_start",
    "config_differences",
    "check_resume_config",
    "guard_run_directory",
]

LOCK_FILE = "run.lock"
#: Files of an earlier run that a fresh start would overwrite or mix with.
RUN_FILES = ("train_config.yaml",)
#: ``(section, key)`` pairs whose change alters what a checkpoint's step, weights or data position mean.
MEANING_KEYS = (
    ("model", "name"), ("model", "init"), ("model", "pretrained"), ("model", "open_clip_model"),
    ("model", "open_clip_pretrained"), ("model", "overrides"), ("model", "context_length"),
    ("data", "source"), ("data", "paths"), ("data", "synthetic"), ("data", "batch_size"), ("data", "num_workers"),
)

#: The locks this process holds now, by token (a lock file naming this pid but no live lock object is stale).
_HELD: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _warn_line(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class RunDirectoryError(UsageError):
    """The run directory cannot be used as asked (locked by another run, or holding a run that would be lost)."""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists but belongs to another user
        return True
    return True


class RunLock:
    """An exclusive lock on a run directory, released by :meth:`release` (or as a context manager)."""

    def __init__(self, output_dir: str | os.PathLike):
        self.path = Path(output_dir) / LOCK_FILE
        self.token = uuid.uuid4().hex
        self.held = False

    def _owner(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable or half-written: treated as held by an unknown owner
        return data if isinstance(data, dict) else {}

    def _is_stale(self, owner: dict) -> bool:
        if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
            return False
        if owner["pid"] == os.getpid():
            return owner.get("token") not in _HELD
        return not _process_alive(owner["pid"])

    def acquire(self) -> RunLock:
        """Create the lock file; raises ``RunDirectoryError`` naming the owner when another live run holds it."""
        record = {"pid": os.getpid(), "host": socket.gethostname(), "token": self.token,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None:
                    continue  # released meanwhile: try again
                if not self._is_stale(owner):
                    who = (f"process {owner.get('pid')} on host {owner.get('host')} (since {owner.get('started')})"
                           if owner else "an unknown process (the lock file is unreadable)")
                    raise RunDirectoryError(
                        f"{self.path.parent} is in use by {who}: another probclip train writes it; wait for it, "
                        f"use another run.output_dir, or delete {self.path} if that run is gone") from None
                warnings.warn(f"taking over the stale lock {self.path} of process {owner.get('pid')} on host "
                              f"{owner.get('host')}, which no longer runs", RuntimeWarning, stacklevel=2)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(record, handle)
            self.held = True
            _HELD[self.token] = self
            return self
        raise RunDirectoryError(f"could not take the lock {self.path}; another run is starting on the same directory")

    def release(self) -> None:
        """Remove the lock file if this object holds it."""
        if not self.held:
            return
        self.held = False
        _HELD.pop(self.token, None)
        owner = self._owner()
        if owner and owner.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _earlier_run_files(output_dir: Path) -> list[Path]:
    found = [output_dir / name for name in RUN_FILES if (output_dir / name).exists()]
    root = output_dir / CHECKPOINT_DIR
    if root.is_dir():
        found += sorted(p for p in root.glob("step_*") if p.is_dir())
    return found


def check_fresh_start(output_dir: str | os.PathLike, overwrite: bool, log: Callable[[str], None] = _warn_line) -> None:
    """Before a run without ``run.resume``: refuse a directory holding an earlier run, or, with ``overwrite``,
    remove that run's checkpoints, ``train_config.yaml`` and ``log.jsonl`` (saying so through ``log``)."""
    output_dir = Path(output_dir)
    found = _earlier_run_files(output_dir)
    if not found:
        return
    if not overwrite:
        names = ", ".join(str(p.relative_to(output_dir)) for p in found[:3]) + (" ..." if len(found) > 3 else "")
        raise RunDirectoryError(
            f"{output_dir} already holds a run ({names}); continue it with --resume latest, start over with "
            "--run.overwrite true (which removes its checkpoints and log), or use another run.output_dir")
    for path in (output_dir / CHECKPOINT_DIR, output_dir / "log.jsonl", *(output_dir / n for n in RUN_FILES)):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    log(f"run.overwrite: removed the earlier run's checkpoints, log and config from {output_dir}")


def _expanded(section: str, key: str, value: Any) -> Any:
    if (section, key) == ("data", "paths") and value:
        return expand_shard_urls([value] if isinstance(value, str) else list(value))
    return value


def config_differences(saved: dict, current: dict, saved_world_size: int | None = None,
                       world_size: int | None = None) -> list[str]:
    """``["data.batch_size: 64 -> 128", ...]`` for the :data:`MEANING_KEYS` (and the process count) that differ
    between the config dict a checkpoint was written with and the current one."""
    differences = []
    for section, key in MEANING_KEYS:
        old = _expanded(section, key, (saved.get(section) or {}).get(key))
        new = _expanded(section, key, (current.get(section) or {}).get(key))
        if old != new:
            differences.append(f"{section}.{key}: {old!r} -> {new!r}")
    if saved_world_size is not None and world_size is not None and saved_world_size != world_size:
        differences.append(f"processes: {saved_world_size} -> {world_size}")
    return differences


def check_resume_config(checkpoint_dir: str | os.PathLike, config, state: dict, world_size: int,
                        log: Callable[[str], None] = _warn_line) -> None:
    """Refuse (``RunDirectoryError``) to resume ``checkpoint_dir`` with a config that changes its meaning, unless
    ``run.allow_config_change``; then the differences are only logged. A change of the process count is never
    allowed (each process's data position is stored separately)."""
    saved_path = Path(checkpoint_dir) / "train_config.yaml"
    try:
        saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        log(f"warning: {saved_path} is missing; cannot check that the configuration still matches the checkpoint")
        return
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise RunDirectoryError(f"cannot read {saved_path} to compare configurations: {err}") from err
    saved_world = state.get("world_size") if isinstance(state, dict) else None
    differences = config_differences(saved, config.to_dict(), saved_world, world_size)
    if not differences:
        return
    if saved_world is not None and saved_world != world_size:
        raise RunDirectoryError(
            f"checkpoint {checkpoint_dir} was written by {saved_world} process(es); resume it with the same number "
            f"(now {world_size}); all differences: {'; '.join(differences)}")
    if not config.run.allow_config_change:
        raise RunDirectoryError(
            f"resuming {checkpoint_dir} with a configuration that changes what it means: {'; '.join(differences)}; "
            "resume with the same values, or pass --run.allow_config_change true to accept the change")
    log(f"warning: resuming {checkpoint_dir} with configuration changes (run.allow_config_change): "
        f"{'; '.join(differences)}")


def guard_run_directory(config, output_dir: str | os.PathLike, resume_dir: Path | None, state: dict | None,
                        world_size: int, is_main: bool, log: Callable[[str], None] = _warn_line) -> RunLock | None:
    """The checks before a run writes ``output_dir``; returns the held :class:`RunLock` (main process) or None.

    Takes the lock (main process), then refuses an unsafe fresh start (:func:`check_fresh_start`) or an unsafe
    resume (:func:`check_resume_config`); says when the resumed checkpoint lies outside ``output_dir``. The lock
    is released again when a check fails.
    """
    lock = RunLock(output_dir).acquire() if is_main else None
    try:
        if resume_dir is None:
            if is_main and config.run.resume is None:
                check_fresh_start(output_dir, config.run.overwrite, log)
        else:
            inside = Path(output_dir).resolve() / CHECKPOINT_DIR
            if is_main and inside not in Path(resume_dir).resolve().parents:
                log(f"warning: resuming from {resume_dir}, outside the run directory {output_dir}; new checkpoints "
                    f"go to {inside}")
            check_resume_config(resume_dir, config, state or {}, world_size, log if is_main else (lambda _: None))
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return lock

