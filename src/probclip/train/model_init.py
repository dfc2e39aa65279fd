"""Building the model a run starts from: scratch, a checkpoint, or open_clip towers; then context extension,
uncertainty re-initialisation, freezing and gradient checkpointing (the ``model`` config section)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UsageError
from ..models import create_model, extend_context_length, init_from_open_clip, load_pretrained_model

__all__ = ["build_model", "reinit_uncertainty", "uncertainty_parameter_names", "freeze_towers"]


def uncertainty_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that carry uncertainty only: log-variance heads and UNC tokens."""
    return [
        name for name, _ in model.named_parameters()
        if ".head.logvar." in name or name.endswith("unc_token") or name.endswith("trunk.reg_token")
    ]


@torch.no_grad()
def reinit_uncertainty(model: nn.Module) -> list[str]:
    """Re-initialise the log-variance heads (weights ~ N(0, (0.02 / sqrt(W))^2), bias = the tower's
    ``init_unc_bias``) and the UNC tokens (~ N(0, 0.01^2) for text, N(0, 0.02^2) for vision); returns the names."""
    for tower in (model.visual, model.text):
        head = tower.head
        width = head.logvar.in_features
        nn.init.normal_(head.logvar.weight, std=0.02 * width**-0.5)
        nn.init.constant_(head.logvar.bias, head.init_unc_bias)
    nn.init.normal_(model.text.unc_token, std=0.01)
    nn.init.normal_(model.visual.trunk.reg_token, std=0.02)
    return uncertainty_parameter_names(model)


def freeze_towers(model: nn.Module, vision: bool, text: bool, heads: bool) -> list[str]:
    """Freeze the chosen towers' parameters (LiT-style). Unless ``heads``, a frozen tower's uncertainty parameters
    (log-variance head, UNC token) stay trainable. Returns the names of the frozen parameters."""
    frozen = []
    keep = set() if heads else set(uncertainty_parameter_names(model))
    for prefix, enabled in (("visual.", vision), ("text.", text)):
        if not enabled:
            continue
        for name, param in model.named_parameters():
            if not name.startswith(prefix) or name in keep:
                continue
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def _open_clip_source(name: str, pretrained: str | None):
    import open_clip

    return open_clip.create_model(name, pretrained=pretrained)


def build_model(section, log=print):
    """The ``ProbCLIP`` described by a ``ModelSection``, in training mode.

    - ``init: scratch``: ``create_model(name, **overrides)``.
    - ``init: pretrained``: a released ProLIP or probclip checkpoint (directory or ``hf-hub:``), loaded strictly.
    - ``init: open_clip``: ``create_model(name, **overrides)`` then ``init_from_open_clip`` with the open_clip model
      ``open_clip_model`` / ``open_clip_pretrained`` (towers copied, UNC parameters fresh).
    Then, in order: ``context_length`` extension, ``reinit_unc``, freezing, gradient checkpointing.
    """

    if section.init == "pretrained":
        model = load_pretrained_model(section.pretrained)
        if section.overrides:
            raise UsageError(
                "model.overrides cannot change a pretrained checkpoint's architecture; remove them or use init: scratch"
            )
        log(f"model: loaded {section.pretrained} ({model.num_parameters / 1e6:.2f}M parameters)")
    else:
        model = create_model(section.name, **section.overrides)
        if section.init == "open_clip":
            source = _open_clip_source(section.open_clip_model, section.open_clip_pretrained)
            init_from_open_clip(model, source)
            del source
            log(f"model: {section.name} initialised from open_clip {section.open_clip_model} "
                f"({section.open_clip_pretrained or 'random'}), uncertainty parameters fresh")
        else:
            log(f"model: {section.name} from scratch ({model.num_parameters / 1e6:.2f}M parameters)")
    if section.context_length is not None and section.context_length != model.config.text.context_length:
        old = model.config.text.context_length
        extend_context_length(model, section.context_length, section.context_keep_first)
        log(f"model: text context extended {old} -> {section.context_length} tokens")
    if section.reinit_unc:
        reinit_uncertainty(model)
        log("model: uncertainty heads and UNC tokens re-initialised")
    if section.freeze_vision or section.freeze_text:
        frozen = freeze_towers(model, section.freeze_vision, section.freeze_text, section.freeze_heads)
        log(f"model: {len(frozen)} parameter tensors frozen")
    model.set_grad_checkpointing(section.grad_checkpointing)
    return model.train()
