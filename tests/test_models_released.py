"""Released-checkpoint compatibility: exact outputs, lossless key conversion, strict loading, every architecture."""

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import probclip
from probclip.models import (
    CheckpointMismatchError,
    ProbCLIP,
    config_from_released,
    create_model,
    probclip_to_released_state_dict,
    released_to_probclip_state_dict,
    save_released,
)

OFFICIAL = Path(__file__).parent / "fixtures" / "prolip-official"


@pytest.fixture(scope="module")
def official_io():
    return load_file(str(OFFICIAL / "tiny-official-io.safetensors"))


@pytest.fixture(scope="module")
def official_model():
    model, _ = probclip.create_model_from_pretrained(OFFICIAL / "tiny-official")
    return model


def test_released_checkpoint_reproduces_reference_outputs(official_model, official_io):
    model = official_model
    assert model.config.released_compat and not model.training
    with torch.no_grad():
        out = model(official_io["images"], official_io["text"])
        image_raw, _ = model.visual(official_io["images"])
        text_raw, _ = model.text(official_io["text"])
    produced = {
        "image_mean": out["image"].mean,
        "image_logvar": out["image"].logvar,
        "text_mean": out["text"].mean,
        "text_logvar": out["text"].logvar,
        "image_mean_unnormalized": image_raw,
        "text_mean_unnormalized": text_raw,
        "logit_scale_exp": out["logit_scale"].exp(),
        "logit_bias": out["logit_bias"],
    }
    for key, value in produced.items():
        expected = official_io[key]
        torch.testing.assert_close(value.reshape(expected.shape), expected, atol=1e-5, rtol=0, msg=key)


def test_native_mode_differs_where_the_released_quirks_are(official_model, official_io):
    native = ProbCLIP(official_model.config.replace(released_compat=False)).eval()
    native.load_state_dict(official_model.state_dict())
    with torch.no_grad():
        text = native.encode_text(official_io["text"])
        image = native.encode_image(official_io["images"])
    # native: text logvar comes from the UNC token, image mean from a single ln_post
    assert not torch.allclose(text.logvar, official_io["text_logvar"], atol=1e-3)
    assert not torch.allclose(image.mean, official_io["image_mean"], atol=1e-3)
    torch.testing.assert_close(image.logvar, official_io["image_logvar"], atol=1e-5, rtol=0)


def test_native_text_masks_padding_released_does_not(official_model, official_io):
    """Changing what the padding positions hold changes nothing in a native model, everything in the released one."""
    released = copy.deepcopy(official_model)
    native = ProbCLIP(official_model.config.replace(released_compat=False)).eval()
    native.load_state_dict(official_model.state_dict())
    tokens = official_io["text"][:3]  # rows padded with id 0
    pad = native.config.text.pad_id
    assert pad == 0 and (tokens == pad).any()
    with torch.no_grad():
        before_native, before_released = native.encode_text(tokens), released.encode_text(tokens)
        for model in (native, released):
            model.text.token_embedding.weight[pad] += torch.linspace(-1.0, 1.0, model.config.text.width)
        after_native, after_released = native.encode_text(tokens), released.encode_text(tokens)
    torch.testing.assert_close(after_native.mean, before_native.mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(after_native.logvar, before_native.logvar, atol=1e-6, rtol=0)
    assert not torch.allclose(after_released.mean, before_released.mean, atol=1e-4)


def test_key_conversion_is_lossless_both_ways(official_dir):
    released = load_file(str(official_dir / "tiny-official" / "model.safetensors"))
    ours = released_to_probclip_state_dict(released)
    back = probclip_to_released_state_dict(ours)
    assert set(back) == set(released)
    for key in released:
        assert torch.equal(back[key], released[key]), key
    again = released_to_probclip_state_dict(back)
    assert all(torch.equal(again[k], ours[k]) for k in ours)


def test_save_released_round_trip(official_model, official_dir, tmp_path):
    save_released(official_model, tmp_path / "out")
    original = load_file(str(official_dir / "tiny-official" / "model.safetensors"))
    written = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(written) == set(original)
    assert all(torch.equal(written[k], original[k]) for k in original)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config_from_released(config).to_dict() | {"name": None} == official_model.config.to_dict() | {"name": None}


def test_mismatched_checkpoint_lists_missing_unexpected_and_shapes(official_dir, tmp_path):
    state = load_file(str(official_dir / "tiny-official" / "model.safetensors"))
    state.pop("visual.ln_post.bias")
    state["text.extra.weight"] = torch.zeros(2)
    state["visual.proj"] = torch.zeros(64, 32)
    (tmp_path / "bad").mkdir()
    save_file(state, str(tmp_path / "bad" / "model.safetensors"))
    (tmp_path / "bad" / "config.json").write_text((official_dir / "tiny-official" / "config.json").read_text())
    state.pop("text.extra.weight")
    with pytest.raises(KeyError, match="text.extra.weight"):
        probclip.create_model_from_pretrained(tmp_path / "bad")
    save_file(state, str(tmp_path / "bad" / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError) as err:
        probclip.create_model_from_pretrained(tmp_path / "bad")
    message = str(err.value)
    assert "missing keys" in message and "visual.trunk.norm.bias" in message
    assert "shape mismatches" in message and "visual.head.mean.weight" in message


def test_unexpected_key_in_probclip_checkpoint_is_rejected(tmp_path):
    model = create_model("ProLIP-Tiny")
    model.save_pretrained(tmp_path / "m")
    state = load_file(str(tmp_path / "m" / "model.safetensors"))
    state["visual.surplus"] = torch.zeros(3)
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="unexpected keys.*visual.surplus"):
        probclip.create_model_from_pretrained(tmp_path / "m")


def _manifest():
    return json.loads((OFFICIAL / "official-state-dict-manifest.json").read_text())


@pytest.mark.parametrize("arch", sorted(_manifest()))
def test_every_released_key_maps_with_the_right_shape(arch):
    entry = _manifest()[arch]
    config = config_from_released(entry["config"])
    with torch.device("meta"):
        model = ProbCLIP(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    released = {k: torch.empty(shape, device="meta") for k, shape in entry["state_dict"].items()}
    converted = released_to_probclip_state_dict(released)
    assert set(converted) == set(expected)
    for key, tensor in converted.items():
        assert tuple(tensor.shape) == expected[key], key
    # the registered native config of the same name has the same parameter shapes
    with torch.device("meta"):
        registered = create_model(arch)
    assert {k: tuple(v.shape) for k, v in registered.state_dict().items()} == expected
