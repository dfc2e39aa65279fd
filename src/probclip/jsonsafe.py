"""The one JSON sanitiser: NaN and infinities (which JSON cannot hold) replaced, nested containers walked."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["json_safe"]


def json_safe(value: Any, nonfinite: str = "null", other: Callable[[Any], Any] | None = None) -> Any:
    """``value`` ready for ``json.dumps(..., allow_nan=False)``.

    Dicts (keys become strings), lists and tuples are walked; tensors and NumPy arrays become lists, and their
    scalars (anything with ``.item()``) Python numbers; bytes become text (UTF-8, undecodable bytes replaced). A
    non-finite float becomes ``None`` (``nonfinite="null"``: results files and the service's answers, where it means
    "undefined") or its name ``"nan"`` / ``"inf"`` / ``"-inf"`` (``nonfinite="text"``: run logs, which keep which
    one it was). A value of any other type is returned as it is, or as ``other(value)`` when ``other`` is given
    (the service passes ``str``, so that any metadata value can be sent).
    """
    if nonfinite not in ("null", "text"):
        raise ValueError(f"nonfinite must be 'null' or 'text'; got {nonfinite!r}")
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return None if nonfinite == "null" else str(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, nonfinite, other) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, nonfinite, other) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if hasattr(value, "tolist") and callable(value.tolist) and getattr(value, "ndim", 0) > 0:
        return json_safe(value.tolist(), nonfinite, other)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        return json_safe(value.item(), nonfinite, other)
    return value if other is None else other(value)
