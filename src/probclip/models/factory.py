"""Building models: from a registered name or a config, from a checkpoint directory or a hub repository."""

from __future__ import annotations

import os
from typing import Any

import torch

from ..transforms import image_transform
from .config import ProbCLIPConfig, word_tokenizer_config
from .hub import is_checkpoint_id, resolve_checkpoint_dir
from .loading import load_state_dict_strict, read_checkpoint_dir
from .model import ProbCLIP
from .registry import get_model_config

__all__ = [
    "create_model",
    "create_model_from_pretrained",
    "create_model_and_transforms",
    "load_pretrained_model",
]


def _resolve_config(name_or_config: str | dict | ProbCLIPConfig) -> ProbCLIPConfig:
    if isinstance(name_or_config, ProbCLIPConfig):
        return ProbCLIPConfig.from_dict(name_or_config.to_dict())
    if isinstance(name_or_config, dict):
        return ProbCLIPConfig.from_dict(name_or_config)
    if isinstance(name_or_config, str):
        return get_model_config(name_or_config)
    raise TypeError(
        f"expected a registered model name, a ProbCLIPConfig or a config dict; got {type(name_or_config).__name__}"
    )


def _finish(model: ProbCLIP, device: Any, dtype: torch.dtype | None) -> ProbCLIP:
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model


def create_model(
    name_or_config: str | dict | ProbCLIPConfig,
    pretrained: str | os.PathLike | None = None,
    *,
    device: Any = None,
    dtype: torch.dtype | None = None,
    word_vocab: list[str] | None = None,
    **overrides: Any,
) -> ProbCLIP:
    """Build a ``ProbCLIP`` from a registered name (``probclip.list_models()``), a config or a config dict.

    Args:
        name_or_config: model name, ``ProbCLIPConfig`` or dict in ``ProbCLIPConfig.to_dict()`` layout.
        pretrained: optional checkpoint (directory or ``hf-hub:owner/repo``) whose weights are loaded strictly;
            a checkpoint in the released layout switches the model to ``released_compat``.
        device, dtype: where and in which dtype to put the model.
        word_vocab: for word-level tokenizers, the vocabulary to store in the config (vocab_size follows).
        overrides: config fields to replace, e.g. ``embed_dim=32`` or ``text={"context_length": 24}``.

    Returns a model in training mode without ``pretrained``, in eval mode with it.
    """
    config = _resolve_config(name_or_config)
    if word_vocab is not None:
        overrides["text"] = {**overrides.get("text", {}), **word_tokenizer_config(word_vocab)}
    if overrides:
        config = config.replace(**overrides)
    if pretrained is None:
        return _finish(ProbCLIP(config), device, dtype)
    directory = resolve_checkpoint_dir(pretrained)
    ckpt_config, state_dict, layout = read_checkpoint_dir(directory)
    if ckpt_config.released_compat != config.released_compat:
        config = config.replace(released_compat=ckpt_config.released_compat)
    model = ProbCLIP(config)
    load_state_dict_strict(model, state_dict, source=f"{layout} checkpoint {directory}")
    return _finish(model.eval(), device, dtype)


def load_pretrained_model(
    path_or_hub_id: str | os.PathLike,
    *,
    device: Any = None,
    dtype: torch.dtype | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
) -> ProbCLIP:
    """The model stored in a directory or hub repository (probclip or released layout), loaded strictly, in eval
    mode (``ProbCLIP.from_pretrained``)."""
    return ProbCLIP.from_pretrained(path_or_hub_id, device=device, dtype=dtype, revision=revision, cache_dir=cache_dir)


def create_model_from_pretrained(
    path_or_hub_id: str | os.PathLike,
    *,
    device: Any = None,
    dtype: torch.dtype | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
) -> tuple[ProbCLIP, Any]:
    """Load a checkpoint (``hf-hub:owner/repo``, a released-format directory, or a ``save_pretrained`` directory).

    Returns ``(model in eval mode, preprocess)`` where ``preprocess`` maps a PIL image to a ``[3, H, W]`` tensor.
    """
    model = load_pretrained_model(path_or_hub_id, device=device, dtype=dtype, revision=revision, cache_dir=cache_dir)
    return model, image_transform(model.config.vision, train=False)


def create_model_and_transforms(
    name_or_config: str | dict | ProbCLIPConfig,
    pretrained: str | os.PathLike | None = None,
    **kwargs: Any,
) -> tuple[ProbCLIP, Any, Any]:
    """``create_model(name_or_config, pretrained, **kwargs)`` plus ``(train_transform, eval_transform)``.

    ``name_or_config`` may also be an ``hf-hub:`` id or a checkpoint directory (then ``pretrained`` must be None).
    """
    is_checkpoint = isinstance(name_or_config, (str, os.PathLike)) and is_checkpoint_id(name_or_config)
    if is_checkpoint:
        if pretrained is not None:
            raise ValueError(f"give either a checkpoint ({name_or_config!r}) or pretrained={pretrained!r}, not both")
        model = load_pretrained_model(name_or_config, **kwargs)
    else:
        model = create_model(name_or_config, pretrained, **kwargs)
    vision = model.config.vision
    return model, image_transform(vision, train=True), image_transform(vision, train=False)
