"""``ProbCLIP``: a vision tower and a text tower producing Gaussian embeddings, plus logit parameters."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from safetensors.torch import save_file
from torch import nn

from ..embedding import ProbEmbedding
from .config import ProbCLIPConfig
from .hub import resolve_checkpoint_dir
from .inputs import check_image_input, check_token_input
from .loading import load_state_dict_strict, read_checkpoint_dir
from .text import TextTower
from .vision import VisionTower

__all__ = ["ProbCLIP"]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class ProbCLIP(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="probclip",
    tags=["probclip", "prolip", "probabilistic-embeddings", "vision-language"],
):
    """Probabilistic CLIP model: images and texts become diagonal Gaussians ``ProbEmbedding(mean, logvar)``.

    Attributes:
        visual: ``VisionTower`` (``visual.image_size`` pixels, ``visual.num_patches`` patches).
        text: ``TextTower`` (``text.context_length`` tokens).
        logit_scale: 0-dim parameter, log of the similarity scale (init log(1/0.07)).
        logit_bias: 0-dim parameter, additive bias of the sigmoid loss (init -10).
        config: the ``ProbCLIPConfig`` the model was built from.

    Save with ``save_pretrained(dir)`` (``config.json`` + ``model.safetensors``) or ``push_to_hub(repo_id)``;
    load with ``probclip.create_model_from_pretrained(dir)`` or ``ProbCLIP.from_pretrained(dir)``.
    """

    def __init__(self, config: ProbCLIPConfig | dict | None = None):
        super().__init__()
        if config is None:
            config = ProbCLIPConfig()
        elif isinstance(config, dict):
            config = ProbCLIPConfig.from_dict(config)
        elif not isinstance(config, ProbCLIPConfig):
            raise TypeError(f"ProbCLIP expects a ProbCLIPConfig or a dict; got {type(config).__name__}")
        self.config = config
        self.embed_dim = config.embed_dim
        self.visual = VisionTower(config.vision, config.embed_dim, double_norm_cls=config.released_compat)
        self.text = TextTower(config.text, config.embed_dim, released_compat=config.released_compat)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(config.init_logit_bias)))

    # ----------------------------------------------------------------------------------------- encoding
    def encode_image(self, images: torch.Tensor, keep_patches: torch.Tensor | None = None) -> ProbEmbedding:
        """``images [B, 3, H, W]`` (preprocessed) -> ``ProbEmbedding [B, D]`` with unit-norm mean.

        ``keep_patches``: optional integer tensor ``[B, K]`` of patch indices (0..num_patches-1) to keep, for a
        masked view; CLS and UNC are always kept.
        """
        check_image_input(images)
        mean, logvar = self.visual(images, keep_patches)
        return ProbEmbedding(F.normalize(mean, dim=-1), logvar)

    def encode_text(self, tokens: torch.Tensor) -> ProbEmbedding:
        """``tokens [B, L]`` (L <= context length) -> ``ProbEmbedding [B, D]`` with unit-norm mean."""
        check_token_input(tokens)
        mean, logvar = self.text(tokens)
        return ProbEmbedding(F.normalize(mean, dim=-1), logvar)

    def forward(
        self,
        images: torch.Tensor | None = None,
        tokens: torch.Tensor | None = None,
        keep_patches: torch.Tensor | None = None,
    ) -> dict:
        """Encode both modalities.

        Returns ``dict(image=ProbEmbedding | None, text=ProbEmbedding | None, logit_scale=0-dim log scale,
        logit_bias=0-dim bias)``.
        """
        return {
            "image": None if images is None else self.encode_image(images, keep_patches),
            "text": None if tokens is None else self.encode_text(tokens),
            # Views, not the Parameters themselves: DistributedDataParallel (find_unused_parameters=True) marks a
            # parameter returned as an output ready twice.
            "logit_scale": self.logit_scale.view(()),
            "logit_bias": self.logit_bias.view(()),
        }

    # ----------------------------------------------------------------------------------------- training aids
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute transformer blocks in the backward pass of both towers (less memory, more compute)."""
        self.visual.grad_checkpointing = bool(enable)
        self.text.grad_checkpointing = bool(enable)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ----------------------------------------------------------------------------------------- parameter rules
    def _towers(self) -> tuple[tuple[str, nn.Module], ...]:
        return (("visual.", self.visual), ("text.", self.text))

    def no_weight_decay(self) -> set[str]:
        """Names of the multi-dimensional parameters without weight decay: the logit parameters, embeddings and
        learned tokens (the towers name theirs). 0/1-D parameters (norms, biases) never take weight decay."""
        names = {"logit_scale", "logit_bias"}
        for prefix, tower in self._towers():
            names.update(prefix + name for name in tower.no_weight_decay())
        return names

    def uncertainty_parameter_names(self) -> list[str]:
        """Names of the parameters that carry uncertainty only: both log-variance heads and both UNC tokens."""
        return [prefix + name for prefix, tower in self._towers() for name in tower.uncertainty_parameter_names()]

    @torch.no_grad()
    def reset_uncertainty(self) -> list[str]:
        """Re-initialise the log-variance heads (weights ~ N(0, (0.02 / sqrt(W))^2), bias = the tower's
        ``init_unc_bias``) and the UNC tokens (~ N(0, 0.01^2) for text, N(0, 0.02^2) for vision).

        Returns the names of the re-initialised parameters (``uncertainty_parameter_names()``).
        """
        # This order of random draws (heads, then text UNC, then vision UNC) is the one runs have always used.
        self.visual.head.reset_logvar()
        self.text.head.reset_logvar()
        self.text.reset_unc_token()
        self.visual.reset_unc_token()
        return self.uncertainty_parameter_names()

    def lock_image_tower(self, keep_uncertainty: bool = True) -> list[str]:
        """Freeze the vision tower (LiT-style), keeping its uncertainty parameters trainable when
        ``keep_uncertainty``; returns the frozen parameters' names."""
        return ["visual." + name for name in self.visual.lock(keep_uncertainty)]

    def lock_logvar_heads(self) -> list[str]:
        """Freeze both log-variance heads (for objectives on the means alone, which give them no gradient);
        returns the frozen parameters' names."""
        frozen = []
        for prefix, tower in self._towers():
            for name, param in tower.head.logvar.named_parameters():
                param.requires_grad_(False)
                frozen.append(f"{prefix}head.logvar.{name}")
        return frozen

    def lock_text_tower(self, keep_uncertainty: bool = True) -> list[str]:
        """Freeze the text tower, keeping its uncertainty parameters trainable when ``keep_uncertainty``; returns
        the frozen parameters' names."""
        return ["text." + name for name in self.text.lock(keep_uncertainty)]

    # ----------------------------------------------------------------------------------------- saving / loading
    def _save_pretrained(self, save_directory: Path) -> None:
        """Write ``model.safetensors`` (probclip key names) and ``config.json`` (``ProbCLIPConfig.to_dict()``)."""
        save_directory = Path(save_directory)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(save_directory / WEIGHTS_NAME), metadata={"format": "pt", "library": "probclip"})
        (save_directory / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        device: Any = None,
        dtype: torch.dtype | None = None,
        revision: str | None = None,
        cache_dir: str | None = None,
    ) -> ProbCLIP:
        """The model stored in a directory or ``hf-hub:owner/repo`` (probclip or released layout), loaded strictly,
        in eval mode, moved to ``device`` / ``dtype`` when given."""
        directory = resolve_checkpoint_dir(pretrained_model_name_or_path, revision=revision, cache_dir=cache_dir)
        config, state_dict, layout = read_checkpoint_dir(directory)
        if config.name is None:
            config.name = directory.name
        model = cls(config)
        load_state_dict_strict(model, state_dict, source=f"{layout} checkpoint {directory}")
        model.eval()
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=dtype)
        return model
