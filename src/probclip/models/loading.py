"""Reading checkpoints (probclip or released layout) and strict state-dict loading."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..errors import InputError
from ..textfiles import read_json_file
from .config import CONFIG_FORMAT, ProbCLIPConfig
from .released import (
    config_from_released,
    is_released_config,
    released_to_probclip_state_dict,
)

__all__ = ["CheckpointMismatchError", "load_safetensors", "load_state_dict_strict", "read_checkpoint_dir",
           "read_config_file"]


class CheckpointMismatchError(InputError, ValueError):
    """A checkpoint's keys or shapes do not match the model. Attributes list each difference."""

    def __init__(self, missing: list, unexpected: list, mismatched: list, source: str = "checkpoint"):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        lines = [f"{source} does not match the model:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {missing}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {unexpected}")
        if mismatched:
            shown = [f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in mismatched]
            lines.append(f"  shape mismatches ({len(mismatched)}): {shown}")
        super().__init__("\n".join(lines))


def load_state_dict_strict(model: nn.Module, state_dict: dict, source: str = "checkpoint") -> None:
    """Copy ``state_dict`` into ``model``; any missing, unexpected or mis-shaped key raises
    ``CheckpointMismatchError``."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        (k, state_dict[k].shape, expected[k].shape)
        for k in sorted(set(expected) & set(state_dict))
        if state_dict[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(missing, unexpected, mismatched, source)
    wrong_kind = [f"{k} ({state_dict[k].dtype})" for k in sorted(expected)
                  if expected[k].is_floating_point() and not state_dict[k].is_floating_point()]
    if wrong_kind:
        raise InputError(f"{source} holds non-floating-point tensors where the model has floating-point weights: "
                         f"{wrong_kind[:5]}{' ...' if len(wrong_kind) > 5 else ''}; the checkpoint is not a model "
                         "of this kind or was written wrongly")
    model.load_state_dict(state_dict, strict=True)


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` file (on the CPU); a corrupt or truncated file raises ``InputError`` naming
    it. safetensors holds tensors only: loading one never runs code."""
    path = Path(path)
    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise InputError(f"{path} is not a readable safetensors file (corrupt or truncated): {err}") from err


def read_config_file(path: str | Path) -> ProbCLIPConfig:
    """Parse a checkpoint's ``config.json`` (probclip or released layout) into a ``ProbCLIPConfig``."""
    return _parse_config(Path(path))[0]


def _parse_config(config_path: Path) -> tuple[ProbCLIPConfig, str]:
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} not found; a checkpoint directory needs config.json and model.safetensors"
        )
    raw = read_json_file(config_path)  # UTF-8, within max_text_file_bytes, not nested too deeply
    if is_released_config(raw):
        return config_from_released(raw, name=config_path.parent.name), "released"
    if isinstance(raw, dict) and raw.get("format") == CONFIG_FORMAT:
        return ProbCLIPConfig.from_dict(raw), "probclip"
    raise ValueError(
        f"{config_path} is neither a probclip config (with \"format\": \"{CONFIG_FORMAT}\") nor a released ProLIP "
        f"config (with vision_cfg/text_cfg); got keys {sorted(raw) if isinstance(raw, dict) else type(raw).__name__}"
    )


def read_checkpoint_dir(directory: str | Path) -> tuple[ProbCLIPConfig, dict[str, torch.Tensor], str]:
    """Read ``config.json`` + ``model.safetensors`` from ``directory``.

    Returns ``(config, state_dict with probclip key names, layout)`` where layout is ``"probclip"`` or
    ``"released"`` (a released checkpoint's config has ``released_compat=True``).
    """
    directory = Path(directory)
    config, layout = _parse_config(directory / "config.json")
    weights_path = directory / "model.safetensors"
    if not weights_path.is_file():
        raise FileNotFoundError(
            f"{weights_path} not found; a checkpoint directory needs config.json and model.safetensors"
        )
    state_dict = load_safetensors(weights_path)
    if layout == "released":
        state_dict = released_to_probclip_state_dict(state_dict)
    return config, state_dict, layout
