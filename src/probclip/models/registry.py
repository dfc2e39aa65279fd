"""Registry of named model configurations (the JSON files in ``probclip/models/configs/``)."""

from __future__ import annotations

import json
from importlib import resources

from ..errors import InputError
from .config import ProbCLIPConfig

__all__ = ["UnknownModelError", "list_models", "get_model_config", "register_model_config"]


class UnknownModelError(InputError, KeyError):
    """A model name that is not registered; the message lists the registered ones."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""

_REGISTRY: dict[str, dict] = {}
_LOADED = False


def _load_builtin_configs() -> None:
    global _LOADED
    if _LOADED:
        return
    folder = resources.files("probclip.models") / "configs"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            name = entry.name[: -len(".json")]
            try:
                data = json.loads(entry.read_text(encoding="utf-8"))
                data["name"] = name
                ProbCLIPConfig.from_dict(data)  # validate now: a broken file fails loudly, naming itself
            except (ValueError, TypeError) as err:
                raise ValueError(f"registered model config {entry.name} (model {name!r}) is invalid: {err}") from err
            _REGISTRY.setdefault(name, data)
    _LOADED = True


def list_models() -> list[str]:
    """Names of every registered model configuration, sorted."""
    _load_builtin_configs()
    return sorted(_REGISTRY)


def get_model_config(name: str) -> ProbCLIPConfig:
    """The ``ProbCLIPConfig`` registered under ``name`` (a fresh copy). Unknown names raise ``KeyError``."""
    _load_builtin_configs()
    if name not in _REGISTRY:
        raise UnknownModelError(f"unknown model name {name!r}; known models: {', '.join(sorted(_REGISTRY))}")
    return ProbCLIPConfig.from_dict(_REGISTRY[name])


def register_model_config(name: str, config: ProbCLIPConfig | dict, overwrite: bool = False) -> None:
    """Register ``config`` under ``name`` (refuses to replace an existing name unless ``overwrite``)."""
    _load_builtin_configs()
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"model name {name!r} is already registered; pass overwrite=True to replace it")
    data = config.to_dict() if isinstance(config, ProbCLIPConfig) else dict(config)
    data["name"] = name
    ProbCLIPConfig.from_dict(data)
    _REGISTRY[name] = data
