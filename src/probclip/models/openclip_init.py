"""Initialise a ProbCLIP from a pretrained open_clip model (fine-tuning start): copy both towers, keep UNC fresh.

Supported sources: open_clip models whose vision tower is open_clip's own ``VisionTransformer`` with a class
token and token pooling (CLIP ViTs), and whose text tower is open_clip's ``TextTransformer`` (CLIP's causal
text towers and SigLIP-style ``no_causal_mask`` towers alike). Copied: patch embedding, CLS token, positional
rows, ln_pre, every block, ln_post, projections, token embedding, ln_final, logit scale (and bias when the
source has one). Kept as initialised by probclip: the UNC tokens, both log-variance heads and the text CLS
token. Positional rows that the source lacks take its nearest row: the vision UNC row copies the CLS row; the
text UNC and CLS rows copy the source's last text row.
"""

from __future__ import annotations

import torch
from torch import nn

from .keymap import OPEN_CLIP_TO_TIMM_BLOCK_KEYS
from .model import ProbCLIP

__all__ = ["init_from_open_clip"]



def _vision_pairs(visual: nn.Module, model: ProbCLIP) -> dict[str, torch.Tensor]:
    from open_clip.transformer import VisionTransformer as OpenClipViT  # heavy; only this initialiser

    if not isinstance(visual, OpenClipViT):
        raise ValueError(
            f"vision tower {type(visual).__name__} is not supported; init_from_open_clip copies open_clip's own "
            "VisionTransformer (CLIP ViTs), not timm trunks"
        )
    if visual.attn_pool is not None or getattr(visual, "pool_type", "tok") != "tok":
        raise ValueError(f"vision tower pools with {visual.pool_type!r}/attention pooling; only CLS-token pooling maps")
    if visual.proj is None or getattr(visual.conv1, "bias", None) is not None:
        raise ValueError("vision tower needs a bias-free conv1 and a projection matrix `proj`")
    src = visual.state_dict()
    pos = src["positional_embedding"]  # [1 + N, W]: CLS, patches
    ours_pos = model.visual.trunk.pos_embed.detach()[0].clone()
    if ours_pos.shape[0] != pos.shape[0] + 1:
        raise ValueError(
            f"source vision tower has {pos.shape[0] - 1} patches, the model {ours_pos.shape[0] - 2}; "
            "image_size / patch_size must match"
        )
    new_pos = torch.cat([pos[:1], pos[:1], pos[1:]], dim=0)  # UNC row starts as the CLS row
    pairs = {
        "visual.trunk.cls_token": src["class_embedding"].reshape(1, 1, -1),
        "visual.trunk.pos_embed": new_pos.unsqueeze(0),
        "visual.trunk.patch_embed.proj.weight": src["conv1.weight"],
        "visual.trunk.norm_pre.weight": src["ln_pre.weight"],
        "visual.trunk.norm_pre.bias": src["ln_pre.bias"],
        "visual.trunk.norm.weight": src["ln_post.weight"],
        "visual.trunk.norm.bias": src["ln_post.bias"],
        "visual.head.mean.weight": src["proj"].t(),
    }
    n_blocks = len(visual.transformer.resblocks)
    if n_blocks != len(model.visual.trunk.blocks):
        raise ValueError(f"source vision tower has {n_blocks} blocks, the model {len(model.visual.trunk.blocks)}")
    for i in range(n_blocks):
        for theirs, ours in OPEN_CLIP_TO_TIMM_BLOCK_KEYS:
            pairs[f"visual.trunk.blocks.{i}.{ours}"] = src[f"transformer.resblocks.{i}.{theirs}"]
    return pairs


def _text_pairs(source: nn.Module, model: ProbCLIP) -> dict[str, torch.Tensor]:
    text = getattr(source, "text", None)
    if text is None:  # open_clip.CLIP keeps its text tower's parts on the model itself
        text = source
    if getattr(text, "cls_emb", None) is not None:
        raise ValueError("source text tower has its own CLS embedding (CoCa-style); not supported")
    parts = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")
    missing = [p for p in parts if getattr(text, p, None) is None]
    if missing:
        raise ValueError(f"source text tower lacks {missing}; need an open_clip TextTransformer-like tower")
    pos = text.positional_embedding.detach()  # [L_src, W]
    ours_pos = model.text.positional_embedding.detach().clone()  # [L + 2, W]
    length = ours_pos.shape[0] - 2
    if pos.shape[1] != ours_pos.shape[1]:
        raise ValueError(f"source text width {pos.shape[1]} != model text width {ours_pos.shape[1]}")
    copied = min(length, pos.shape[0])
    ours_pos[:copied] = pos[:copied]
    ours_pos[copied:] = pos[copied - 1]  # rows beyond the source (incl. UNC, CLS) take its last row
    pairs = {
        "text.token_embedding.weight": text.token_embedding.weight.detach(),
        "text.positional_embedding": ours_pos,
        "text.ln_final.weight": text.ln_final.weight.detach(),
        "text.ln_final.bias": text.ln_final.bias.detach(),
    }
    projection = text.text_projection
    if isinstance(projection, nn.Linear):
        pairs["text.head.mean.weight"] = projection.weight.detach()
        pairs["text.head.mean.bias"] = (
            projection.bias.detach() if projection.bias is not None else torch.zeros(projection.out_features)
        )
    else:  # a [W, D] matrix
        pairs["text.head.mean.weight"] = projection.detach().t()
        pairs["text.head.mean.bias"] = torch.zeros(projection.shape[1])
    blocks = text.transformer.resblocks
    if len(blocks) != len(model.text.blocks):
        raise ValueError(f"source text tower has {len(blocks)} blocks, the model {len(model.text.blocks)}")
    for i, block in enumerate(blocks):
        state = block.state_dict()
        for theirs, ours in OPEN_CLIP_TO_TIMM_BLOCK_KEYS:
            pairs[f"text.blocks.{i}.{ours}"] = state[theirs]
    return pairs


@torch.no_grad()
def init_from_open_clip(model: ProbCLIP, open_clip_model: nn.Module) -> ProbCLIP:
    """Copy the towers of ``open_clip_model`` into ``model`` in place (UNC parameters stay fresh); returns ``model``.

    Every copied tensor must match the model's shape; all mismatches are reported together in a ``ValueError``.
    Architectural settings that have no tensor (LayerNorm eps, activation) are checked too.
    """
    pairs = _vision_pairs(open_clip_model.visual, model)
    pairs.update(_text_pairs(open_clip_model, model))
    pairs["logit_scale"] = open_clip_model.logit_scale.detach().reshape(())
    if getattr(open_clip_model, "logit_bias", None) is not None:
        pairs["logit_bias"] = open_clip_model.logit_bias.detach().reshape(())
    ours = dict(model.named_parameters())
    problems = [f"{k}: source {tuple(v.shape)} vs model {tuple(ours[k].shape)}" for k, v in pairs.items()
                if k not in ours or ours[k].shape != v.shape]
    src_block = open_clip_model.visual.transformer.resblocks[0]
    if abs(src_block.ln_1.eps - model.visual.cfg.ln_eps) > 0:
        problems.append(f"vision LayerNorm eps: source {src_block.ln_1.eps} vs model {model.visual.cfg.ln_eps}")
    src_act = type(src_block.mlp.gelu).__name__
    want_act = "QuickGELU" if model.visual.cfg.act == "quick_gelu" else "GELU"
    if src_act != want_act:
        problems.append(f"activation: source {src_act} vs model {want_act}")
    if problems:
        raise ValueError("open_clip model does not fit the probclip model:\n  " + "\n  ".join(problems))
    for name, value in pairs.items():
        ours[name].copy_(value)
    return model
