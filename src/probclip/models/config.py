"""Typed model configuration: vision tower, text tower and the whole probabilistic CLIP model.

A ``ProbCLIPConfig`` is plain data (JSON round-trip via ``to_dict`` / ``from_dict``). The registry's JSON
files in ``probclip/models/configs/`` and every ``config.json`` written by ``save_pretrained`` use this
layout; the released checkpoints' own layout is converted by ``probclip.models.released``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config_fields import from_known_fields
from ..limits import check_parameter_count

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "VisionConfig",
    "TextConfig",
    "ProbCLIPConfig",
    "CONFIG_FORMAT",
    "WORD_SPECIAL_TOKENS",
    "word_tokenizer_config",
]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Value of the ``format`` key that marks a config written by probclip (released configs lack it).
CONFIG_FORMAT = "probclip"

#: Special tokens of the word-level tokenizer, at ids 0, 1, 2.
WORD_SPECIAL_TOKENS = ("<pad>", "<unk>", "<mask>")

_ACTIVATIONS = ("gelu", "quick_gelu")
_TOKENIZER_TYPES = ("clip", "hf", "word")


def _check_positive_int(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{owner}.{name} must be a positive integer; got {value!r}")


def _check_activation(owner: str, value: str) -> None:
    if value not in _ACTIVATIONS:
        raise ValueError(f"{owner}.act must be one of {_ACTIVATIONS}; got {value!r}")


@dataclass
class VisionConfig:
    """Vision tower: a pre-LN ViT with tokens ``[CLS, UNC, patch_1..patch_N]``.

    ``image_size`` and ``patch_size`` are in pixels; ``width`` is the token width W; heads = W / head_width.
    ``image_mean``/``image_std`` (RGB, 0..1 scale) and ``resize_interpolation`` define preprocessing.
    """

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    head_width: int = 64
    mlp_ratio: float = 4.0
    ln_eps: float = 1e-5
    act: str = "gelu"
    init_unc_bias: float = -10.0
    image_mean: tuple = OPENAI_CLIP_MEAN
    image_std: tuple = OPENAI_CLIP_STD
    resize_interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "width", "layers", "head_width"):
            _check_positive_int("VisionConfig", name, getattr(self, name))
        if self.image_size % self.patch_size:
            raise ValueError(
                f"VisionConfig.image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        if self.width % self.head_width:
            raise ValueError(
                f"VisionConfig.width ({self.width}) must be a multiple of head_width ({self.head_width})"
            )
        _check_activation("VisionConfig", self.act)
        self.image_mean = tuple(float(v) for v in self.image_mean)
        self.image_std = tuple(float(v) for v in self.image_std)
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError(
                f"VisionConfig.image_mean/image_std must have 3 values (RGB); got {self.image_mean} / {self.image_std}"
            )
        if self.resize_interpolation not in ("bicubic", "bilinear"):
            raise ValueError(
                f"VisionConfig.resize_interpolation must be 'bicubic' or 'bilinear'; got {self.resize_interpolation!r}"
            )

    @property
    def heads(self) -> int:
        return self.width // self.head_width

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2


@dataclass
class TextConfig:
    """Text tower: token embedding, appended ``[UNC, CLS]`` tokens, pre-LN transformer, final LayerNorm.

    ``context_length`` L is the number of text tokens; the positional embedding has L + 2 rows.
    ``tokenizer`` describes the tokenizer: ``{"type": "clip"}`` (CLIP BPE),
    ``{"type": "hf", "name": <hub id or local path>, "clean": "canonicalize"|"whitespace"|"lower"|None}``,
    or ``{"type": "word", "vocab": [words...]}``. ``pad_id`` is the padding token id (masked out of
    attention in native models); ``mask_id`` the token used for masked text views (or None).
    """

    context_length: int = 64
    vocab_size: int = 32100
    width: int = 768
    heads: int = 12
    layers: int = 12
    mlp_ratio: float = 4.0
    ln_eps: float = 1e-6
    act: str = "gelu"
    init_unc_bias: float = -10.0
    pad_id: int = 1
    mask_id: int | None = 32000
    tokenizer: dict = field(
        default_factory=lambda: {"type": "hf", "name": "timm/ViT-B-16-SigLIP", "clean": "canonicalize"}
    )

    def __post_init__(self) -> None:
        for name in ("context_length", "vocab_size", "width", "heads", "layers"):
            _check_positive_int("TextConfig", name, getattr(self, name))
        if self.width % self.heads:
            raise ValueError(f"TextConfig.width ({self.width}) must be a multiple of heads ({self.heads})")
        _check_activation("TextConfig", self.act)
        if not isinstance(self.tokenizer, dict) or self.tokenizer.get("type") not in _TOKENIZER_TYPES:
            raise ValueError(
                f"TextConfig.tokenizer must be a dict with 'type' in {_TOKENIZER_TYPES}; got {self.tokenizer!r}"
            )
        for name in ("pad_id", "mask_id"):
            value = getattr(self, name)
            if value is None and name == "mask_id":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ValueError(
                    f"TextConfig.{name} must be a token id in [0, vocab_size={self.vocab_size}); got {value!r}"
                )


@dataclass
class ProbCLIPConfig:
    """Whole model: embedding size D, both towers, logit parameters and the forward-pass mode.

    ``released_compat=True`` reproduces the released ProLIP forward pass exactly (LayerNorm applied twice to
    the image CLS token, no text attention mask, text log-variance computed from the projected CLS mean);
    ``False`` is the native model (one LayerNorm, padding masked, text log-variance from the UNC token).
    ``init_logit_scale`` is log(1/temperature); ``init_logit_bias`` the initial sigmoid-loss bias.
    """

    embed_dim: int = 768
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float = -10.0
    released_compat: bool = False
    name: str | None = None
    format: str = CONFIG_FORMAT

    def __post_init__(self) -> None:
        _check_positive_int("ProbCLIPConfig", "embed_dim", self.embed_dim)
        if isinstance(self.vision, dict):
            self.vision = from_known_fields(VisionConfig, self.vision, "ProbCLIPConfig.vision")
        if isinstance(self.text, dict):
            self.text = from_known_fields(TextConfig, self.text, "ProbCLIPConfig.text")
        if not isinstance(self.vision, VisionConfig) or not isinstance(self.text, TextConfig):
            raise TypeError(
                f"ProbCLIPConfig.vision/text must be VisionConfig/TextConfig or dicts; got "
                f"{type(self.vision).__name__} / {type(self.text).__name__}"
            )
        if self.format != CONFIG_FORMAT:
            raise ValueError(f"ProbCLIPConfig.format must be {CONFIG_FORMAT!r}; got {self.format!r}")
        check_parameter_count(self.parameter_count(), f"model config {self.name or '(unnamed)'}")
        if self.released_compat and self.text.width != self.embed_dim:
            raise ValueError(
                "released_compat=True computes the text log-variance from the projected mean, which needs "
                f"text.width == embed_dim; got text.width={self.text.width}, embed_dim={self.embed_dim}"
            )

    def parameter_count(self) -> int:
        """The number of parameters this config describes, counted from its sizes alone (nothing is allocated):
        patch and token embeddings, positions, every transformer block (attention and MLP), the heads. It is within
        a few percent of the built model's count and serves to refuse a config too large to build."""
        def blocks(width: int, layers: int, mlp_ratio: float) -> int:
            hidden = int(width * mlp_ratio)
            return layers * (4 * width * width + 4 * width + 2 * width * hidden + hidden + width + 4 * width)

        v, t, d = self.vision, self.text, self.embed_dim
        vision = (3 * v.patch_size**2 * v.width + (v.num_patches + 2) * v.width + 2 * v.width
                  + blocks(v.width, v.layers, v.mlp_ratio) + 4 * v.width + 2 * v.width * d)
        text = (t.vocab_size * t.width + (t.context_length + 2) * t.width + 2 * t.width
                + blocks(t.width, t.layers, t.mlp_ratio) + 2 * t.width + 2 * t.width * d)
        return int(vision + text)

    def to_dict(self) -> dict:
        """A JSON-ready nested dict (tuples become lists)."""
        data = dataclasses.asdict(self)
        data["vision"]["image_mean"] = list(self.vision.image_mean)
        data["vision"]["image_std"] = list(self.vision.image_std)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ProbCLIPConfig:
        """Inverse of ``to_dict``; unknown keys raise ``ValueError`` naming them."""
        return from_known_fields(cls, copy.deepcopy(data), "ProbCLIPConfig")

    def replace(self, **changes: Any) -> ProbCLIPConfig:
        """A copy with top-level fields replaced; ``vision``/``text`` may be partial dicts merged into the towers."""
        data = self.to_dict()
        for key, value in changes.items():
            if key in ("vision", "text") and isinstance(value, dict):
                data[key].update(copy.deepcopy(value))
            else:
                data[key] = value
        return ProbCLIPConfig.from_dict(data)


def word_tokenizer_config(vocab: Sequence[str]) -> dict:
    """``TextConfig`` fields for a word-level tokenizer over ``vocab``: tokenizer dict, vocab_size, pad/mask ids."""
    words = [str(w).lower() for w in vocab]
    if len(set(words)) != len(words):
        dupes = sorted({w for w in words if words.count(w) > 1})
        raise ValueError(f"word vocabulary has duplicates (after lowercasing): {dupes}")
    clash = sorted(set(words) & set(WORD_SPECIAL_TOKENS))
    if clash:
        raise ValueError(f"word vocabulary must not contain the special tokens {clash}")
    return {
        "tokenizer": {"type": "word", "vocab": words},
        "vocab_size": len(WORD_SPECIAL_TOKENS) + len(words),
        "pad_id": 0,
        "mask_id": 2,
    }
