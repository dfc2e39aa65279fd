"""Initialising a ProbCLIP from an open_clip CLIP model."""

import pytest
import torch

import probclip
from probclip.models.openclip_init import init_from_open_clip

TINY_OPEN_CLIP = dict(
    embed_dim=64,
    vision_cfg=dict(image_size=32, layers=2, width=64, head_width=32, patch_size=8),
    text_cfg=dict(context_length=32, vocab_size=49409, width=64, heads=2, layers=2),
)


@pytest.fixture(scope="module")
def open_clip_tiny():
    import open_clip

    torch.manual_seed(3)
    return open_clip.CLIP(**TINY_OPEN_CLIP).eval()


def test_towers_are_copied_and_unc_stays_fresh(open_clip_tiny):
    model = probclip.create_model("ProLIP-Tiny").eval()
    fresh_unc = model.visual.trunk.reg_token.detach().clone()
    fresh_logvar = model.text.head.logvar.weight.detach().clone()
    init_from_open_clip(model, open_clip_tiny)
    src = open_clip_tiny
    assert torch.equal(
        model.visual.trunk.blocks[1].attn.qkv.weight, src.visual.transformer.resblocks[1].attn.in_proj_weight
    )
    assert torch.equal(model.visual.head.mean.weight, src.visual.proj.t())
    assert torch.equal(model.visual.trunk.pos_embed[0, 2:], src.visual.positional_embedding[1:])
    assert torch.equal(model.text.blocks[0].mlp.fc2.weight, src.transformer.resblocks[0].mlp.c_proj.weight)
    assert torch.equal(model.text.token_embedding.weight, src.token_embedding.weight)
    assert torch.equal(model.logit_scale, src.logit_scale)
    assert torch.equal(model.visual.trunk.reg_token, fresh_unc)
    assert torch.equal(model.text.head.logvar.weight, fresh_logvar)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ours = model.encode_image(images).mean
        theirs = src.encode_image(images, normalize=True)
    # one extra (UNC) token in attention: close to, not equal to, the source's embedding
    assert torch.nn.functional.cosine_similarity(ours, theirs).min() > 0.95


def test_mismatched_open_clip_model_is_reported(open_clip_tiny):
    model = probclip.create_model("ProLIP-Tiny", embed_dim=32)
    with pytest.raises(ValueError, match=r"visual.head.mean.weight: source \(64, 64\) vs model \(32, 64\)"):
        init_from_open_clip(model, open_clip_tiny)
