"""``load_model``: a probclip model from a checkpoint folder or ``hf-hub:`` id, as the search commands name it."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import UsageError
from ..models import create_model_from_pretrained

__all__ = ["load_model"]


def load_model(spec: str) -> tuple[nn.Module, str]:
    """Load a probclip model from a checkpoint folder or ``hf-hub:`` id; returns ``(model, source)`` in eval mode.

    ``source`` is the absolute folder path (or the hub id), recorded in the manifest to reload the model.
    """
    path = Path(spec).expanduser()
    source = str(path.resolve()) if path.is_dir() else spec
    try:
        model = create_model_from_pretrained(source)
    except (FileNotFoundError, ValueError, OSError) as err:
        raise UsageError(f"--model {spec!r} cannot be loaded: {str(err).splitlines()[0]}") from err
    model = model[0] if isinstance(model, tuple) else model
    return model.eval(), source
