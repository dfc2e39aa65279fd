"""The one JSON sanitiser: NaN and infinities (which JSON cannot hold) replaced, nested containers walked."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["json_safe"]


def json_safe(value: Any, nonfinite: str = "null") -> Any:
    """``value`` ready for ``json.dumps(..., allow_nan=False)``.

    Dicts (keys become strings), lists and tuples are walked; tensors and NumPy scalars with ``.item()`` become
    Python numbers. A non-finite float becomes ``None`` (``nonfinite="null"``: results files, where it means
    "undefined") or its name ``"nan"`` / ``"inf"`` / ``"-inf"`` (``nonfinite="text"``: run logs, which keep
    which one it was).
    """
    if nonfinite not in ("null", "text"):
        raise ValueError(f"nonfinite must be 'null' or 'text'; got {nonfinite!r}")
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return None if nonfinite == "null" else str(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, nonfinite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, nonfinite) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        return json_safe(value.item(), nonfinite)
    return value
