"""The one unknown-key check of probclip's configuration dataclasses (model configs and training configs)."""

from __future__ import annotations

import dataclasses
from typing import Any

from .errors import UsageError

__all__ = ["check_known_keys", "from_known_fields"]


def check_known_keys(cls: type, data: dict, where: str) -> None:
    """Raise ``UsageError`` naming the keys of ``data`` that are not fields of the dataclass ``cls``.

    ``where`` names the place in the message, e.g. ``"section 'optim'"`` or ``"ProbCLIPConfig.vision"``.
    """
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known, key=str)
    if unknown:
        raise UsageError(f"unknown keys {unknown} in {where}; known keys are {sorted(known)}")


def from_known_fields(cls: type, data: Any, where: str):
    """``cls(**data)`` after checking that ``data`` is a dict holding only fields of ``cls``."""
    if not isinstance(data, dict):
        raise UsageError(f"{where} must be a mapping of {cls.__name__} fields; got {type(data).__name__}")
    check_known_keys(cls, data, where)
    return cls(**data)
