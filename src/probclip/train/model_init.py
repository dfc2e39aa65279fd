"""Building the model a run starts from: scratch, a checkpoint, or open_clip towers; then context extension,
uncertainty re-initialisation, freezing and gradient checkpointing (the ``model`` config section)."""

from __future__ import annotations

from torch import nn

from ..errors import UsageError
from ..models import (
    create_model,
    extend_context_length,
    init_from_open_clip,
    load_pretrained_model,
)

__all__ = ["build_model", "reinit_uncertainty", "uncertainty_parameter_names", "freeze_towers"]


def uncertainty_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that carry uncertainty only (the model's ``uncertainty_parameter_names()``)."""
    return model.uncertainty_parameter_names()


def reinit_uncertainty(model: nn.Module) -> list[str]:
    """Re-initialise the model's uncertainty parameters (``model.reset_uncertainty()``); returns their names."""
    return model.reset_uncertainty()


def freeze_towers(model: nn.Module, vision: bool, text: bool, heads: bool) -> list[str]:
    """Freeze the chosen towers' parameters (LiT-style). Unless ``heads``, a frozen tower's uncertainty parameters
    (log-variance head, UNC token) stay trainable. Returns the names of the frozen parameters."""
    frozen = model.lock_image_tower(keep_uncertainty=not heads) if vision else []
    return frozen + (model.lock_text_tower(keep_uncertainty=not heads) if text else [])


def _open_clip_source(name: str, pretrained: str | None):
    import open_clip  # heavy; only init: open_clip needs it

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
