"""Checking a requested torch device before any work starts."""

from __future__ import annotations

import torch

from .errors import UsageError

__all__ = ["check_device"]


def check_device(device: str, option: str = "device") -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"`` (-> CPU or CUDA) -> a ``torch.device`` that exists here.

    Raises ``UsageError`` naming ``option`` for an unknown device string or a CUDA device this machine lacks.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UsageError(f"{option} {device!r} is not a torch device; use cpu, cuda or cuda:N") from err
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"{option} {device!r} asks for CUDA, but this machine has no CUDA device; use cpu")
        if parsed.index is not None and parsed.index >= count:
            raise UsageError(f"{option} {device!r}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    elif parsed.type != "cpu":
        raise UsageError(f"{option} {device!r} is not supported; use cpu, cuda or cuda:N")
    return parsed
