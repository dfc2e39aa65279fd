"""The model owns its parameter rules: weight decay, uncertainty parameters, resetting them, locking towers."""

from __future__ import annotations

import pytest
import torch

import probclip
from probclip.train.optim import param_groups


def _name_rule_no_decay(name: str, param: torch.Tensor) -> bool:
    """The rule written with parameter-name fragments (what the model's answers must reproduce)."""
    fragments = ("token_embedding", "positional_embedding", "pos_embed", "cls_token", "reg_token", "unc_token")
    return (param.dim() < 2 or name.rsplit(".", 1)[-1] in ("logit_scale", "logit_bias")
            or any(f in name for f in fragments) or ".norm" in name or "ln_" in name or name.endswith(".bias"))


def _meta_model(name: str) -> probclip.ProbCLIP:
    with torch.device("meta"):
        return probclip.create_model(name)


@pytest.mark.parametrize("name", probclip.list_models())
def test_every_registered_model_answers_its_parameter_questions(name):
    model = _meta_model(name)
    params = dict(model.named_parameters())
    assert model.no_weight_decay() <= set(params)
    decay, no_decay = param_groups(model, 0.1)
    assert set(no_decay["names"]) == {n for n, p in params.items() if _name_rule_no_decay(n, p)}
    assert set(decay["names"]) == set(params) - set(no_decay["names"])
    uncertainty = model.uncertainty_parameter_names()
    assert set(uncertainty) == {"visual.head.logvar.weight", "visual.head.logvar.bias", "visual.trunk.reg_token",
                                "text.head.logvar.weight", "text.head.logvar.bias", "text.unc_token"}


def test_locking_a_tower_keeps_its_uncertainty_parameters_unless_asked():
    model = probclip.create_model("ProLIP-Tiny-Word", vision={"layers": 1}, text={"layers": 1})
    frozen = model.lock_text_tower()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"text.unc_token", "text.head.logvar.weight"} <= trainable
    assert "text.blocks.0.attn.qkv.weight" in frozen and "text.head.mean.weight" in frozen
    assert all(n.startswith("text.") for n in frozen) and "visual.head.mean.weight" in trainable
    frozen_all = model.lock_image_tower(keep_uncertainty=False)
    assert "visual.head.logvar.weight" in frozen_all and "visual.trunk.reg_token" in frozen_all
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("visual."))


def test_reset_uncertainty_draws_as_before():
    model = probclip.create_model("ProLIP-Tiny-Word", vision={"layers": 1}, text={"layers": 1})
    torch.manual_seed(3)
    model.reset_uncertainty()
    torch.manual_seed(3)  # the reference: heads (vision, text), then the text UNC token, then the vision one
    width_v, width_t = model.visual.head.logvar.in_features, model.text.head.logvar.in_features
    expected_v = torch.randn_like(model.visual.head.logvar.weight) * 0.02 * width_v**-0.5
    expected_t = torch.randn_like(model.text.head.logvar.weight) * 0.02 * width_t**-0.5
    expected_unc_t = torch.randn_like(model.text.unc_token) * 0.01
    expected_unc_v = torch.randn_like(model.visual.trunk.reg_token) * 0.02
    torch.testing.assert_close(model.visual.head.logvar.weight, expected_v)
    torch.testing.assert_close(model.text.head.logvar.weight, expected_t)
    torch.testing.assert_close(model.text.unc_token, expected_unc_t)
    torch.testing.assert_close(model.visual.trunk.reg_token, expected_unc_v)
    assert torch.all(model.text.head.logvar.bias == model.config.text.init_unc_bias)
