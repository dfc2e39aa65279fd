"""AdamW parameter groups (no weight decay on 0/1-D parameters and on those the model names in ``no_weight_decay()``)
and the LR schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["is_no_decay", "param_groups", "build_optimizer", "learning_rate", "set_learning_rate", "clamp_logit_scale"]

#: Upper clamp of logit_scale, log(100), as in CLIP/ProLIP.
MAX_LOGIT_SCALE = math.log(100.0)


def is_no_decay(name: str, param: torch.Tensor, no_decay_names: set[str]) -> bool:
    """True for parameters without weight decay: 0/1-D tensors (norm weights, biases, scalars) and the
    multi-dimensional ones the model names in ``model.no_weight_decay()`` (embeddings, learned tokens, logits)."""
    return param.dim() < 2 or name in no_decay_names


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups over the trainable parameters: ``{"params", "weight_decay": weight_decay, "names"}`` for
    weight matrices and ``{..., "weight_decay": 0.0}`` for the rest (see ``is_no_decay``)."""
    decay, no_decay, decay_names, no_decay_names = [], [], [], []
    model_no_decay = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if is_no_decay(name, param, model_no_decay):
            no_decay.append(param)
            no_decay_names.append(name)
        else:
            decay.append(param)
            decay_names.append(name)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameter (every tower and head is frozen)")
    return [
        {"params": decay, "weight_decay": float(weight_decay), "names": decay_names},
        {"params": no_decay, "weight_decay": 0.0, "names": no_decay_names},
    ]


def build_optimizer(model: nn.Module, optim) -> torch.optim.AdamW:
    """AdamW over ``param_groups(model, optim.weight_decay)`` with ``optim.lr``, ``betas``, ``eps`` (an
    ``OptimSection``)."""
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model, optim.weight_decay)]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)


def learning_rate(step: int, total_steps: int, optim) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup from ``lr / warmup`` to ``lr`` over
    ``warmup_steps``, then cosine decay to ``min_lr`` at ``total_steps`` (or constant ``lr`` with
    ``schedule: constant``)."""
    if optim.warmup_steps and step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return optim.lr
    decay_steps = max(total_steps - optim.warmup_steps, 1)
    progress = min(max(step - optim.warmup_steps, 0) / decay_steps, 1.0)
    return optim.min_lr + 0.5 * (optim.lr - optim.min_lr) * (1.0 + math.cos(math.pi * progress))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate to ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr


@torch.no_grad()
def clamp_logit_scale(model: nn.Module, maximum: float = MAX_LOGIT_SCALE) -> None:
    """Clamp ``model.logit_scale`` (a log scale) to ``[0, maximum]`` in place."""
    scale = getattr(model, "logit_scale", None)
    if isinstance(scale, torch.Tensor):
        scale.clamp_(0.0, maximum)
