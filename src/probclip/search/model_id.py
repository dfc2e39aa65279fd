"""Naming a model in a collection's manifest: its name, a hash of its config and a fingerprint of its weights.

The fingerprint hashes every weight (about 1 s per 100 M weights), so it is computed once per model object and
cached on it (attribute ``_probclip_fingerprint``) together with a cheap key of the weights' state: each tensor's
name, storage address, shape, dtype and in-place version counter (``Tensor._version``, bumped by every in-place
write such as ``load_state_dict``, ``copy_`` or an optimizer step). A changed key recomputes it. A write
through ``tensor.data`` bypasses the version counter: call :func:`forget_fingerprint` after one.
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

__all__ = ["config_hash", "forget_fingerprint", "model_fingerprint", "model_record"]


def config_hash(model: nn.Module) -> str:
    """First 16 hex digits of the SHA-256 of the model's config (``config.to_dict()``, keys sorted)."""
    config = model.config.to_dict() if hasattr(model, "config") else {"class": type(model).__name__}
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


_CACHE_ATTR = "_probclip_fingerprint"


def _weights_key(model: nn.Module) -> tuple:
    """What changes when the weights can have changed: per tensor (name, address, shape, dtype, version)."""
    return (config_hash(model), tuple((name, t.data_ptr(), tuple(t.shape), str(t.dtype), t._version)
                                      for name, t in model.state_dict(keep_vars=True).items()))


def model_fingerprint(model: nn.Module) -> str:
    """First 16 hex digits of the SHA-256 of the config hash and every weight (name, dtype, shape, float32 bytes).

    Two models give the same fingerprint only if they compute the same embeddings. Computed once per model object
    and cached on it until its weights change (see the module docstring).
    """
    key = _weights_key(model)
    cached = getattr(model, _CACHE_ATTR, None)
    if cached is not None and cached[0] == key:
        return cached[1]
    fingerprint = _hash_weights(model)
    object.__setattr__(model, _CACHE_ATTR, (key, fingerprint))  # a plain attribute, not a registered module/param
    return fingerprint


def forget_fingerprint(model: nn.Module) -> None:
    """Drop the cached fingerprint of ``model`` (the next :func:`model_fingerprint` hashes the weights again)."""
    if hasattr(model, _CACHE_ATTR):
        object.__delattr__(model, _CACHE_ATTR)


@torch.no_grad()
def _hash_weights(model: nn.Module) -> str:
    digest = hashlib.sha256(config_hash(model).encode("utf-8"))
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def model_record(model: nn.Module, source: str | None) -> dict:
    """The manifest's ``model`` entry: name, config hash, fingerprint, embed_dim and where to load it from."""
    config = getattr(model, "config", None)
    return {
        "name": str(getattr(config, "name", None) or type(model).__name__),
        "config_hash": config_hash(model),
        "fingerprint": model_fingerprint(model),
        "embed_dim": int(getattr(model, "embed_dim", 0) or config.embed_dim),
        "source": source,
    }
