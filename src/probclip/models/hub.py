"""Where a model's files are: a registered name, a checkpoint directory or an ``hf-hub:owner/repo`` id -> files.

The one place that resolves model identifiers; the factory, ``ProbCLIP.from_pretrained`` and the tokenizers use it.
"""

from __future__ import annotations

import os
from pathlib import Path

import huggingface_hub  # the module, not its function: tests replace snapshot_download

from ..errors import UsageError
from .config import ProbCLIPConfig
from .loading import read_config_file
from .registry import UnknownModelError, get_model_config, list_models

__all__ = ["HF_HUB_PREFIX", "LOCAL_DIR_PREFIX", "is_checkpoint_id", "resolve_checkpoint_dir", "resolve_model_config"]

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
#: Files fetched from a hub repository: the config, the weights and the tokenizer's files.
HUB_FILES = ["config.json", "model.safetensors", "*.json", "*.model", "*.txt"]


def is_checkpoint_id(name: str | os.PathLike) -> bool:
    """True for an ``hf-hub:`` / ``local-dir:`` id or an existing directory (not for a registered model name)."""
    text = str(name)
    return text.startswith((HF_HUB_PREFIX, LOCAL_DIR_PREFIX)) or Path(text).expanduser().is_dir()


def resolve_checkpoint_dir(path_or_hub_id: str | os.PathLike, revision: str | None = None,
                           cache_dir: str | None = None) -> Path:
    """``"hf-hub:owner/repo"`` (downloaded with huggingface_hub's ``snapshot_download``), ``"local-dir:PATH"`` or a
    local directory -> the directory holding ``config.json`` and ``model.safetensors``."""
    name = str(path_or_hub_id)
    if name.startswith(HF_HUB_PREFIX):
        repo_id = name[len(HF_HUB_PREFIX):]
        if repo_id.count("/") != 1:
            raise UsageError(f"hub id must look like 'hf-hub:owner/repo'; got {name!r}")
        folder = huggingface_hub.snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                                                   allow_patterns=HUB_FILES)
        return Path(folder)
    if name.startswith(LOCAL_DIR_PREFIX):
        name = name[len(LOCAL_DIR_PREFIX):]
    path = Path(name).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"{name!r} is neither a checkpoint directory nor an 'hf-hub:owner/repo' id "
            "(registered model names go to probclip.create_model(name))"
        )
    return path


def resolve_model_config(name: str) -> ProbCLIPConfig:
    """The config named by ``name``: a registered model name, a checkpoint directory or an ``hf-hub:`` id.

    Raises ``UnknownModelError`` (listing the registered names) when ``name`` is none of these.
    """
    if name in list_models():
        return get_model_config(name)
    if is_checkpoint_id(name):
        return read_config_file(resolve_checkpoint_dir(name) / "config.json")
    raise UnknownModelError(
        f"{name!r} is not a registered model, a checkpoint directory or an 'hf-hub:' id; "
        f"known models: {', '.join(list_models())}"
    )
