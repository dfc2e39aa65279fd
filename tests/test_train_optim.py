"""Optimizer parameter groups, LR schedule, logit-scale clamp, frozen towers and uncertainty re-initialisation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import probclip
from probclip.train.config import OptimSection
from probclip.train.model_init import (
    freeze_towers,
    reinit_uncertainty,
    uncertainty_parameter_names,
)
from probclip.train.optim import (
    build_optimizer,
    clamp_logit_scale,
    learning_rate,
    param_groups,
)


@pytest.fixture(scope="module")
def tiny():
    return probclip.create_model("ProLIP-Tiny-Word", vision={"layers": 1}, text={"layers": 1})


def test_no_weight_decay_on_norms_biases_embeddings_and_logits(tiny):
    decay, no_decay = param_groups(tiny, 0.2)
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    for name in ("logit_scale", "logit_bias", "text.token_embedding.weight", "text.positional_embedding",
                 "text.unc_token", "visual.trunk.cls_token", "visual.trunk.reg_token", "visual.trunk.pos_embed",
                 "text.ln_final.weight", "visual.trunk.norm_pre.weight", "text.head.mean.bias"):
        assert name in no_decay["names"], name
    for name in ("visual.trunk.patch_embed.proj.weight", "text.head.mean.weight", "visual.head.logvar.weight",
                 "text.blocks.0.attn.qkv.weight"):
        assert name in decay["names"], name
    assert len(decay["names"]) + len(no_decay["names"]) == len(list(tiny.parameters()))


def test_warmup_then_cosine():
    optim = OptimSection(lr=1.0, min_lr=0.1, warmup_steps=10)
    assert learning_rate(0, 110, optim) == pytest.approx(0.1)
    assert learning_rate(9, 110, optim) == pytest.approx(1.0)
    assert learning_rate(60, 110, optim) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert learning_rate(110, 110, optim) == pytest.approx(0.1)
    assert learning_rate(500, 110, OptimSection(lr=0.5, warmup_steps=0, schedule="constant")) == 0.5


def test_logit_scale_clamp(tiny):
    with torch.no_grad():
        tiny.logit_scale.fill_(9.0)
    clamp_logit_scale(tiny)
    assert tiny.logit_scale.item() == pytest.approx(math.log(100))
    with torch.no_grad():
        tiny.logit_scale.fill_(-1.0)
    clamp_logit_scale(tiny)
    assert tiny.logit_scale.item() == 0.0


def test_frozen_towers_keep_uncertainty_trainable():
    model = probclip.create_model("ProLIP-Tiny-Word", vision={"layers": 1}, text={"layers": 1})
    frozen = freeze_towers(model, vision=True, text=False, heads=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "visual.trunk.blocks.0.attn.qkv.weight" in frozen and "visual.head.mean.weight" in frozen
    assert {"visual.head.logvar.weight", "visual.head.logvar.bias", "visual.trunk.reg_token"} <= trainable
    assert "text.blocks.0.attn.qkv.weight" in trainable
    optimizer = build_optimizer(model, OptimSection())
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable)


def test_reinit_uncertainty_touches_only_uncertainty_parameters():
    model = probclip.create_model("ProLIP-Tiny-Word", vision={"layers": 1}, text={"layers": 1})
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    names = set(reinit_uncertainty(model))
    assert names == set(uncertainty_parameter_names(model))
    for name, p in model.named_parameters():
        changed = not torch.all(p == 0.5)
        assert changed == (name in names), name
    assert torch.all(model.visual.head.logvar.bias == -10.0)


def test_context_extension_when_fine_tuning_a_checkpoint(tmp_path):
    from probclip.models import resize_text_positional_embedding
    from probclip.train.config import ModelSection
    from probclip.train.model_init import build_model

    source = probclip.create_model("ProLIP-Tiny-Word", vision={"layers": 1}, text={"layers": 1})
    source.save_pretrained(tmp_path / "ckpt")
    section = ModelSection(init="pretrained", pretrained=str(tmp_path / "ckpt"), context_length=40,
                           context_keep_first=8, reinit_unc=False)
    section.validate()
    model = build_model(section, log=lambda *_: None)
    old = source.text.positional_embedding.detach()
    assert model.config.text.context_length == 40
    assert torch.equal(model.text.positional_embedding.detach(), resize_text_positional_embedding(old, 40, 8))
    assert probclip.get_tokenizer(model).context_length == 40


def test_longprolip_config_reproduces_the_reference_resize(official_dir):
    from safetensors.torch import load_file

    from probclip.models import resize_text_positional_embedding
    from probclip.train import load_config

    repo = Path(__file__).resolve().parents[1]
    config = load_config(repo / "configs" / "longprolip.yaml")
    fixture = load_file(str(official_dir / "long-text-pos-embed-66-to-258.safetensors"))
    resized = resize_text_positional_embedding(fixture["old"], config.model.context_length,
                                               config.model.context_keep_first)
    assert torch.allclose(resized, fixture["new"], atol=1e-6)
    assert config.loss.kwargs["inclusion_scale"] == 10 and config.loss.kwargs["inclusion_eps"] == -100
    assert config.optim.lr == 1e-6 and config.optim.warmup_steps == 200 and config.optim.weight_decay == 0.01


def test_open_clip_towers_with_fresh_uncertainty_through_the_loop(tmp_path, monkeypatch):
    import open_clip

    from probclip.train import TrainConfig, model_init, train
    from probclip.train.config import ModelSection
    from test_data_readers import make_csv_dataset
    from test_models_openclip_init import TINY_OPEN_CLIP

    torch.manual_seed(3)
    source = open_clip.CLIP(**TINY_OPEN_CLIP)
    requested = []
    monkeypatch.setattr(model_init, "_open_clip_source", lambda name, tag: requested.append((name, tag)) or source)
    section = ModelSection(name="ProLIP-Tiny", init="open_clip", open_clip_model="ViT-Tiny-Test",
                           open_clip_pretrained="weights.pt", reinit_unc=True)
    section.validate()
    model = model_init.build_model(section, log=lambda *_: None)
    assert requested == [("ViT-Tiny-Test", "weights.pt")] and model.training
    assert torch.equal(model.visual.trunk.blocks[1].attn.qkv.weight,
                       source.visual.transformer.resblocks[1].attn.in_proj_weight)
    assert torch.equal(model.text.token_embedding.weight, source.token_embedding.weight)
    assert torch.all(model.visual.head.logvar.bias == model.visual.head.init_unc_bias)
    assert model.visual.head.logvar.weight.std() < 0.02  # re-initialised: N(0, (0.02 / sqrt(width))^2)

    table = make_csv_dataset(tmp_path / "data", 8)
    config = TrainConfig.from_dict({
        "model": {"name": "ProLIP-Tiny", "init": "open_clip", "open_clip_model": "ViT-Tiny-Test"},
        "data": {"source": "csv", "paths": [str(table)], "batch_size": 4, "caption_separator": "||"},
        "run": {"steps": 1, "output_dir": str(tmp_path / "run"), "tensorboard": False, "progress": "none",
                "cpu_threads": 1, "save_every": 0},
    })
    result = train(config)
    assert result.steps == 1 and math.isfinite(result.final_loss)


def test_fine_tuning_starts_from_a_released_prolip_checkpoint(official_dir):
    from probclip.losses import build_loss
    from probclip.train.config import ModelSection
    from probclip.train.model_init import build_model
    from probclip.train.step import StepInputs, forward_backward

    released, _ = probclip.create_model_from_pretrained(official_dir / "tiny-official")
    section = ModelSection(init="pretrained", pretrained=str(official_dir / "tiny-official"), freeze_vision=True)
    section.validate()
    model = build_model(section, log=lambda *_: None)
    assert model.training and model.config.released_compat
    for (name, a), (_, b) in zip(model.state_dict().items(), released.state_dict().items()):
        assert torch.equal(a, b), name  # loaded strictly, unchanged
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(5, 500, (4, 16), generator=generator)
    inputs = StepInputs(torch.randn(4, 3, 32, 32, generator=generator), tokens, masked_index=torch.tensor([0]),
                        keep_patches=torch.tensor([[0, 2, 5, 7, 9, 11, 13, 15, 1, 3, 4, 6]]).sort(dim=1).values)
    terms = forward_backward(model, build_loss("prolip"), inputs)
    assert all(math.isfinite(v) for v in terms.values())
    assert model.visual.trunk.blocks[0].attn.qkv.weight.grad is None  # frozen tower
    assert (
        model.visual.head.logvar.weight.grad is not None and model.text.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    )
