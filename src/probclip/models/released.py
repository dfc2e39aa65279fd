"""The released ProLIP checkpoint format: config conversion and state-dict key conversion, both ways.

Released checkpoints (``config.json`` with ``embed_dim``/``vision_cfg``/``text_cfg`` + ``model.safetensors``
with open_clip-style key names) map onto probclip's ``ProbCLIP`` one tensor to one tensor; the only changes
are renamings, a transpose of ``visual.proj`` ([W, D] -> Linear weight [D, W]) and a reshape of the
vision CLS/UNC/positional parameters to timm's leading singleton dimensions. Both directions are exact.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from .config import ProbCLIPConfig, TextConfig, VisionConfig
from .keymap import OPEN_CLIP_TO_TIMM_BLOCK_KEYS

__all__ = [
    "is_released_config",
    "config_from_released",
    "config_to_released",
    "released_to_probclip_state_dict",
    "probclip_to_released_state_dict",
    "save_released",
]

# Released text towers: SigLIP SentencePiece (pad = eos = 1, <extra_id_99> = 32000 masks) or CLIP BPE.
_SIGLIP_PAD_ID, _SIGLIP_MASK_ID = 1, 32000

_VISION_KEYS = {"image_size", "layers", "width", "head_width", "patch_size", "mlp_ratio", "embed_unc", "init_unc_bias"}
_TEXT_KEYS = {
    "context_length", "vocab_size", "hf_tokenizer_name", "tokenizer_kwargs", "width", "heads", "layers",
    "mlp_ratio", "no_causal_mask", "proj_bias", "pool_type", "embed_cls", "embed_unc", "norm_kwargs",
    "init_unc_bias",
}
_TOP_KEYS = {"embed_dim", "vision_cfg", "text_cfg", "init_logit_bias", "quick_gelu"}
# Settings every released text tower has; anything else is an architecture probclip does not model.
_TEXT_REQUIRED = {"no_causal_mask": True, "proj_bias": True, "pool_type": "last", "embed_cls": True, "embed_unc": True}


def is_released_config(config: dict) -> bool:
    """True if ``config`` (a parsed ``config.json``) is in the released ProLIP layout."""
    return isinstance(config, dict) and "vision_cfg" in config and "text_cfg" in config


def _check_keys(where: str, data: dict, allowed: set) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"released config {where} has unsupported keys {unknown}; supported: {sorted(allowed)}")


def config_from_released(config: dict, name: str | None = None) -> ProbCLIPConfig:
    """Released ``config.json`` dict -> ``ProbCLIPConfig`` with ``released_compat=True``."""
    if not is_released_config(config):
        raise ValueError(
            f"not a released ProLIP config (needs 'embed_dim', 'vision_cfg', 'text_cfg'); got keys {sorted(config)}"
        )
    _check_keys("(top level)", config, _TOP_KEYS)
    vcfg, tcfg = config["vision_cfg"], config["text_cfg"]
    _check_keys("vision_cfg", vcfg, _VISION_KEYS)
    _check_keys("text_cfg", tcfg, _TEXT_KEYS)
    if vcfg.get("embed_unc", True) is not True:
        raise ValueError(f"released vision_cfg.embed_unc must be true; got {vcfg['embed_unc']!r}")
    for key, expected in _TEXT_REQUIRED.items():
        if key in tcfg and tcfg[key] != expected:
            raise ValueError(f"released text_cfg.{key} must be {expected!r} for a ProLIP model; got {tcfg[key]!r}")
    act = "quick_gelu" if config.get("quick_gelu", False) else "gelu"
    vision = VisionConfig(
        image_size=vcfg.get("image_size", 224),
        patch_size=vcfg.get("patch_size", 16),
        width=vcfg.get("width", 768),
        layers=vcfg.get("layers", 12),
        head_width=vcfg.get("head_width", 64),
        mlp_ratio=float(vcfg.get("mlp_ratio", 4.0)),
        ln_eps=1e-5,
        act=act,
        init_unc_bias=float(vcfg.get("init_unc_bias", -10.0)),
    )
    hf_name = tcfg.get("hf_tokenizer_name")
    vocab_size = tcfg.get("vocab_size", 49408)
    if hf_name:
        clean = tcfg.get("tokenizer_kwargs", {}).get("clean", "whitespace")
        tokenizer = {"type": "hf", "name": hf_name, "clean": clean}
        pad_id = _SIGLIP_PAD_ID
        mask_id = _SIGLIP_MASK_ID if _SIGLIP_MASK_ID < vocab_size else None
    else:
        tokenizer = {"type": "clip"}
        pad_id, mask_id = 0, None
    text = TextConfig(
        context_length=tcfg.get("context_length", 77),
        vocab_size=vocab_size,
        width=tcfg.get("width", 512),
        heads=tcfg.get("heads", 8),
        layers=tcfg.get("layers", 12),
        mlp_ratio=float(tcfg.get("mlp_ratio", 4.0)),
        ln_eps=float(tcfg.get("norm_kwargs", {}).get("eps", 1e-5)),
        act=act,
        init_unc_bias=float(tcfg.get("init_unc_bias", -10.0)),
        pad_id=pad_id,
        mask_id=mask_id,
        tokenizer=tokenizer,
    )
    return ProbCLIPConfig(
        embed_dim=config["embed_dim"],
        vision=vision,
        text=text,
        init_logit_bias=float(config.get("init_logit_bias", -10.0)),
        released_compat=True,
        name=name,
    )


def config_to_released(config: ProbCLIPConfig) -> dict:
    """``ProbCLIPConfig`` -> released ``config.json`` dict (the released forward pass is compatibility mode)."""
    v, t = config.vision, config.text
    if v.ln_eps != 1e-5 or v.act != t.act:
        raise ValueError(
            "the released format needs vision ln_eps 1e-5 and one activation for both towers; got "
            f"ln_eps={v.ln_eps}, vision act={v.act!r}, text act={t.act!r}"
        )
    vision_cfg = {
        "image_size": v.image_size, "layers": v.layers, "width": v.width, "head_width": v.head_width,
        "patch_size": v.patch_size, "mlp_ratio": v.mlp_ratio, "embed_unc": True, "init_unc_bias": v.init_unc_bias,
    }
    text_cfg = {
        "context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width, "heads": t.heads,
        "layers": t.layers, "mlp_ratio": t.mlp_ratio, "norm_kwargs": {"eps": t.ln_eps},
        "init_unc_bias": t.init_unc_bias, **_TEXT_REQUIRED,
    }
    if t.tokenizer["type"] == "hf":
        text_cfg["hf_tokenizer_name"] = t.tokenizer["name"]
        if t.tokenizer.get("clean"):
            text_cfg["tokenizer_kwargs"] = {"clean": t.tokenizer["clean"]}
    elif t.tokenizer["type"] != "clip":
        raise ValueError(
            f"the released format supports CLIP BPE or Hugging Face tokenizers; got {t.tokenizer['type']!r}"
        )
    out = {
        "embed_dim": config.embed_dim,
        "init_logit_bias": config.init_logit_bias,
        "vision_cfg": vision_cfg,
        "text_cfg": text_cfg,
    }
    if v.act == "quick_gelu":
        out["quick_gelu"] = True
    return out


# ------------------------------------------------------------------------------------------------ key mapping
# Each rule: (released regex, probclip template, released->probclip tensor fn, probclip->released tensor fn).


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _add_two_dims(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(1, 1, *t.shape)


def _drop_two_dims(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(*t.shape[2:])


def _add_one_dim(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(1, *t.shape)


def _drop_one_dim(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(*t.shape[1:])


def _transpose(t: torch.Tensor) -> torch.Tensor:
    return t.t().contiguous()


_Fn = Callable[[torch.Tensor], torch.Tensor]
# (released template, probclip template, released->probclip fn, probclip->released fn); "{n}" is a layer index,
# "{wb}" is "weight" or "bias".
_RULES: list[tuple[str, str, _Fn, _Fn]] = [
    ("logit_scale", "logit_scale", _same, _same),
    ("logit_bias", "logit_bias", _same, _same),
    ("visual.class_embedding", "visual.trunk.cls_token", _add_two_dims, _drop_two_dims),
    ("visual.unc_embedding", "visual.trunk.reg_token", _add_two_dims, _drop_two_dims),
    ("visual.positional_embedding", "visual.trunk.pos_embed", _add_one_dim, _drop_one_dim),
    ("visual.conv1.weight", "visual.trunk.patch_embed.proj.weight", _same, _same),
    ("visual.ln_pre.{wb}", "visual.trunk.norm_pre.{wb}", _same, _same),
    ("visual.ln_post.{wb}", "visual.trunk.norm.{wb}", _same, _same),
    ("visual.proj", "visual.head.mean.weight", _transpose, _transpose),
    ("visual.uncertainty_proj.{wb}", "visual.head.logvar.{wb}", _same, _same),
    ("text.cls_emb", "text.cls_token", _same, _same),
    ("text.unc_emb", "text.unc_token", _same, _same),
    ("text.positional_embedding", "text.positional_embedding", _same, _same),
    ("text.token_embedding.weight", "text.token_embedding.weight", _same, _same),
    ("text.ln_final.{wb}", "text.ln_final.{wb}", _same, _same),
    ("text.text_projection.{wb}", "text.head.mean.{wb}", _same, _same),
    ("text.text_uncertainty_projection.{wb}", "text.head.logvar.{wb}", _same, _same),
]
for _released, _ours in OPEN_CLIP_TO_TIMM_BLOCK_KEYS:
    _RULES.append(
        (f"visual.transformer.resblocks.{{n}}.{_released}", f"visual.trunk.blocks.{{n}}.{_ours}", _same, _same)
    )
    _RULES.append((f"text.transformer.resblocks.{{n}}.{_released}", f"text.blocks.{{n}}.{_ours}", _same, _same))


def _template_regex(template: str) -> re.Pattern:
    pattern = re.escape(template).replace(r"\{n\}", r"(?P<n>\d+)").replace(r"\{wb\}", r"(?P<wb>weight|bias)")
    return re.compile(pattern)


_COMPILED = [(_template_regex(r), _template_regex(o), r, o, f, b) for r, o, f, b in _RULES]


def _convert(state_dict: dict, to_probclip: bool) -> dict:
    out: dict = {}
    unknown = []
    for key, tensor in state_dict.items():
        for released_re, probclip_re, released_tmpl, probclip_tmpl, fwd, bwd in _COMPILED:
            match = (released_re if to_probclip else probclip_re).fullmatch(key)
            if match is None:
                continue
            if to_probclip:
                out[probclip_tmpl.format(**match.groupdict())] = fwd(tensor)
            else:
                out[released_tmpl.format(**match.groupdict())] = bwd(tensor)
            break
        else:
            unknown.append(key)
    if unknown:
        direction = "released -> probclip" if to_probclip else "probclip -> released"
        more = f" (and {len(unknown) - 20} more)" if len(unknown) > 20 else ""
        raise KeyError(f"{direction} conversion: no mapping for keys {unknown[:20]}{more}")
    return out


def released_to_probclip_state_dict(state_dict: dict) -> dict:
    """Released key names (``visual.conv1.weight`` ...) -> probclip's ``ProbCLIP.state_dict()`` names; exact."""
    return _convert(state_dict, to_probclip=True)


def probclip_to_released_state_dict(state_dict: dict) -> dict:
    """Inverse of ``released_to_probclip_state_dict``; exact."""
    return _convert(state_dict, to_probclip=False)


def save_released(model, directory) -> None:
    """Write ``model`` in the released on-disk layout (``config.json`` + ``model.safetensors``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = probclip_to_released_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    save_file(
        {k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"), metadata={"format": "pt"}
    )
    (directory / "config.json").write_text(json.dumps(config_to_released(model.config), indent=2, sort_keys=True))
