"""ProbCLIP on tiny configs: registry, shapes, masked views, input checks, save/load, checkpointing, context."""

import math

import pytest
import torch
from safetensors.torch import load_file

import probclip
from probclip import ProbEmbedding
from probclip.models import (
    ProbCLIP,
    ProbCLIPConfig,
    extend_context_length,
    get_model_config,
    resize_text_positional_embedding,
)

RELEASED = ["ViT-B-16-ProLIP", "ViT-B-16-ProLIP-long", "ViT-L-16-ProLIP", "ViT-SO400M-14-ProLIP", "ViT-H-14-ProLIP"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return probclip.create_model("ProLIP-Tiny").eval()


def test_registry_lists_released_and_tiny_models():
    names = probclip.list_models()
    for name in RELEASED + ["ProLIP-Tiny", "ProLIP-Tiny-Word"]:
        assert name in names
    assert names == sorted(names)


def test_unknown_model_name_lists_known_ones():
    with pytest.raises(KeyError) as err:
        probclip.create_model("ViT-Q-99")
    assert "ViT-Q-99" in str(err.value) and "ProLIP-Tiny" in str(err.value)


@pytest.mark.parametrize("name", RELEASED)
def test_released_architecture_configs(name):
    cfg = get_model_config(name)
    assert cfg.name == name and not cfg.released_compat
    assert cfg.vision.ln_eps == 1e-5
    expected_size = 256 if name.startswith("ViT-L") else 224
    assert cfg.vision.image_size == expected_size
    assert (cfg.vision.act == "quick_gelu") == name.startswith("ViT-H")
    assert cfg.text.context_length == {"ViT-B-16-ProLIP-long": 256, "ViT-H-14-ProLIP": 77}.get(name, 64)


def test_config_json_round_trip_and_unknown_keys():
    cfg = get_model_config("ProLIP-Tiny")
    assert ProbCLIPConfig.from_dict(cfg.to_dict()) == cfg
    data = cfg.to_dict()
    data["vision"]["img_size"] = 32
    with pytest.raises(ValueError, match="img_size"):
        ProbCLIPConfig.from_dict(data)


def test_encode_shapes_units_and_initial_parameters(tiny):
    images = torch.randn(3, 3, 32, 32)
    tokens = probclip.get_tokenizer(tiny)(["a red square", "a blue circle", "two stars"])
    out = tiny(images, tokens)
    assert set(out) == {"image", "text", "logit_scale", "logit_bias"}
    for emb in (out["image"], out["text"]):
        assert isinstance(emb, ProbEmbedding) and emb.shape == (3, 64)
        torch.testing.assert_close(emb.mean.norm(dim=-1), torch.ones(3))
        assert torch.isfinite(emb.logvar).all()
    assert out["logit_scale"].dim() == 0 and math.isclose(out["logit_scale"].item(), math.log(1 / 0.07), rel_tol=1e-6)
    assert out["logit_bias"].item() == -10.0
    assert tiny.visual.num_patches == 16 and tiny.visual.image_size == 32


def test_keep_patches_all_in_order_equals_full_view(tiny):
    images = torch.randn(2, 3, 32, 32)
    everything = torch.arange(16).expand(2, -1)
    with torch.no_grad():
        full, kept = tiny.encode_image(images), tiny.encode_image(images, keep_patches=everything)
    torch.testing.assert_close(kept.mean, full.mean)
    torch.testing.assert_close(kept.logvar, full.logvar)


def test_keep_patches_ignores_dropped_patches_and_uses_their_positions(tiny):
    images = torch.randn(2, 3, 32, 32)
    keep = torch.tensor([[0, 5, 9, 15], [1, 2, 3, 4]])
    altered = images.clone()
    altered[0, :, 8:16, 8:16] += 3.0  # patch 5 (grid row 1, column 1): kept for sample 0
    altered[1, :, 24:32, 24:32] -= 2.0  # patch 15 is dropped for sample 1
    with torch.no_grad():
        a = tiny.encode_image(images, keep_patches=keep)
        b = tiny.encode_image(altered, keep_patches=keep)
        shuffled = tiny.encode_image(images, keep_patches=keep.flip(1))
    assert not torch.allclose(a.mean[0], b.mean[0])
    torch.testing.assert_close(a.mean[1], b.mean[1])
    # the kept tokens carry their own positional rows, so their order does not matter (no causal structure)
    torch.testing.assert_close(shuffled.mean, a.mean, atol=1e-5, rtol=0)


def test_bad_keep_patches_and_image_size_are_named(tiny):
    with pytest.raises(ValueError, match=r"0\.\.15"):
        tiny.encode_image(torch.randn(1, 3, 32, 32), keep_patches=torch.tensor([[0, 16]]))
    with pytest.raises(ValueError, match=r"\[B=1, K\]"):
        tiny.encode_image(torch.randn(1, 3, 32, 32), keep_patches=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"48x48 pixels but this model expects 32x32"):
        tiny.encode_image(torch.randn(1, 3, 48, 48))


def test_too_long_tokens_are_rejected(tiny):
    with pytest.raises(ValueError, match="length 40 .* context length is 32"):
        tiny.encode_text(torch.zeros(1, 40, dtype=torch.long))
    with pytest.raises(ValueError, match=r"span \[0, 49409\] but this model's vocabulary is 0..49408"):
        tiny.encode_text(torch.tensor([[0, 49409]]))


def test_save_pretrained_round_trip_is_exact(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "ckpt")
    loaded, preprocess = probclip.create_model_from_pretrained(tmp_path / "ckpt")
    assert loaded.config == tiny.config
    original, reloaded = tiny.state_dict(), loaded.state_dict()
    assert set(original) == set(reloaded)
    assert all(torch.equal(original[k], reloaded[k]) for k in original)
    again = ProbCLIP.from_pretrained(tmp_path / "ckpt")
    assert all(torch.equal(original[k], again.state_dict()[k]) for k in original)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(images).mean, tiny.encode_image(images).mean, atol=0, rtol=0)


def test_hub_id_goes_through_snapshot_download(tiny, tmp_path, monkeypatch):
    tiny.save_pretrained(tmp_path / "repo")
    calls = []

    def fake_snapshot_download(repo_id, revision=None, cache_dir=None, allow_patterns=None):
        calls.append((repo_id, revision))
        return str(tmp_path / "repo")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model, _ = probclip.create_model_from_pretrained("hf-hub:someone/tiny-model", revision="v1")
    assert calls == [("someone/tiny-model", "v1")]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tiny.state_dict().items())
    with pytest.raises(ValueError, match="hf-hub:owner/repo"):
        probclip.create_model_from_pretrained("hf-hub:not-a-repo-id")
    with pytest.raises(FileNotFoundError, match="neither a checkpoint directory"):
        probclip.create_model_from_pretrained(tmp_path / "missing")


def test_create_model_with_pretrained_and_overrides(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "ckpt")
    model = probclip.create_model("ProLIP-Tiny", pretrained=tmp_path / "ckpt")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tiny.state_dict().items())
    small = probclip.create_model("ProLIP-Tiny", embed_dim=32, text={"layers": 1})
    assert small.embed_dim == 32 and len(small.text.blocks) == 1
    with pytest.raises(ValueError, match="shape mismatches"):
        probclip.create_model("ProLIP-Tiny", pretrained=tmp_path / "ckpt", embed_dim=32)


def test_create_model_and_transforms(tmp_path):
    model, train_t, eval_t = probclip.create_model_and_transforms("ProLIP-Tiny")
    from PIL import Image

    image = Image.new("RGB", (50, 40), (200, 30, 30))
    assert train_t(image).shape == eval_t(image).shape == (3, 32, 32)


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(1)
    model = probclip.create_model("ProLIP-Tiny")
    images, tokens = torch.randn(2, 3, 32, 32), torch.randint(1, 500, (2, 32))

    def grads():
        model.zero_grad()
        out = model(images, tokens)
        (out["image"].mean.sum() + out["text"].logvar.sum() + out["text"].mean[:, 0].sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.set_grad_checkpointing(True)
    checkpointed = grads()
    assert model.visual.grad_checkpointing and model.text.grad_checkpointing
    assert set(plain) == set(checkpointed)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_positional_embedding_resize_matches_reference(official_dir):
    data = load_file(str(official_dir / "long-text-pos-embed-66-to-258.safetensors"))
    resized = resize_text_positional_embedding(data["old"], 256)
    torch.testing.assert_close(resized, data["new"], atol=1e-6, rtol=0)


def test_positional_embedding_resize_is_linear_interpolation_of_the_middle_rows():
    pos = torch.randn(40, 8, dtype=torch.float64)
    out = resize_text_positional_embedding(pos, 100, keep_first=10)
    assert out.shape == (102, 8) and out.dtype == torch.float64
    assert torch.equal(out[:10], pos[:10]) and torch.equal(out[-2:], pos[-2:])
    middle = torch.nn.functional.interpolate(pos[10:38].T[None], size=90, mode="linear", align_corners=False)[0].T
    torch.testing.assert_close(out[10:100], middle, atol=1e-5, rtol=0)  # float32 positions, as the reference
    with pytest.raises(ValueError, match="keep_first=10"):
        resize_text_positional_embedding(pos, 8, keep_first=10)


def test_extend_context_length_updates_model_config_and_tokenizer(tmp_path):
    model = probclip.create_model("ProLIP-Tiny")
    old = model.text.positional_embedding.detach().clone()
    extend_context_length(model, 48)
    assert model.text.positional_embedding.shape == (50, 64)
    torch.testing.assert_close(model.text.positional_embedding[-2:].detach(), old[-2:])
    assert model.config.text.context_length == 48 == probclip.get_tokenizer(model).context_length
    long_tokens = torch.randint(1, 500, (1, 48))
    assert model.encode_text(long_tokens).shape == (1, 64)
    model.save_pretrained(tmp_path / "long")
    reloaded, _ = probclip.create_model_from_pretrained(tmp_path / "long")
    assert reloaded.config.text.context_length == 48


def test_first_snippet_of_the_models_documentation_runs():
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "models.md").read_text()
    namespace: dict = {}
    exec(re.findall(r"```python\n(.*?)```", text, re.S)[0], namespace)
    assert namespace["img"].shape == (2, 64) and namespace["out"]["text"].shape == (2, 64)


def test_invalid_configs_name_the_bad_value():
    from probclip.models import TextConfig, VisionConfig

    with pytest.raises(ValueError, match=r"image_size \(30\) must be a multiple of patch_size \(8\)"):
        VisionConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="mask_id must be a token id"):
        TextConfig(vocab_size=100, pad_id=0, mask_id=100)
    with pytest.raises(ValueError, match="text.width=64, embed_dim=32"):
        get_model_config("ProLIP-Tiny").replace(embed_dim=32, released_compat=True)


def test_empty_and_all_padding_texts_stay_finite(tiny):
    tokenizer = probclip.get_tokenizer(tiny)
    with torch.no_grad():
        emb = tiny.encode_text(tokenizer(["", "a"]))
        padding_only = tiny.encode_text(torch.zeros(1, 32, dtype=torch.long))
    assert torch.isfinite(emb.mean).all() and torch.isfinite(padding_only.logvar).all()


def test_native_heads_read_cls_for_mean_and_unc_for_logvar(tiny):
    tokens = probclip.get_tokenizer(tiny)(["a red square"])
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        text_tokens = tiny.text.forward_tokens(tokens)  # [1, L + 2, W]: ..., UNC, CLS
        text = tiny.encode_text(tokens)
        vision_tokens = tiny.visual.forward_tokens(images)  # [1, 2 + N, W]: CLS, UNC, ...
        image = tiny.encode_image(images)
    torch.testing.assert_close(text.logvar, tiny.text.head.logvar(text_tokens[:, -2]))
    torch.testing.assert_close(
        text.mean, torch.nn.functional.normalize(tiny.text.head.mean(text_tokens[:, -1]), dim=-1)
    )
    torch.testing.assert_close(image.logvar, tiny.visual.head.logvar(vision_tokens[:, 1]))
    torch.testing.assert_close(
        image.mean, torch.nn.functional.normalize(tiny.visual.head.mean(vision_tokens[:, 0]), dim=-1)
    )


def test_native_text_output_does_not_depend_on_padded_length(tiny):
    tokens = probclip.get_tokenizer(tiny)(["a red square"])  # [1, 32], padded with 0
    with torch.no_grad():
        full, short = tiny.encode_text(tokens), tiny.encode_text(tokens[:, :8])
    torch.testing.assert_close(short.mean, full.mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(short.logvar, full.logvar, atol=1e-5, rtol=0)


def test_push_to_hub_uploads_a_loadable_checkpoint(tiny, tmp_path, monkeypatch):
    """push_to_hub (from PyTorchModelHubMixin) uploads what save_pretrained writes; the network is faked."""
    import shutil
    from types import SimpleNamespace

    import huggingface_hub.hub_mixin as hub_mixin

    uploaded = tmp_path / "uploaded"

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return SimpleNamespace(repo_id=repo_id)

        def upload_folder(self, repo_id, folder_path, **kwargs):
            shutil.copytree(folder_path, uploaded)
            return "fake-commit"

    monkeypatch.setattr(hub_mixin, "HfApi", FakeApi)
    assert tiny.push_to_hub("someone/tiny") == "fake-commit"
    loaded, _ = probclip.create_model_from_pretrained(uploaded)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in tiny.state_dict().items())


def test_broken_registered_config_file_is_named(tmp_path, monkeypatch):
    from probclip.models import registry

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "Broken-Model.json").write_text('{"embed_dim": 64, "vision": {"img_size": 32}}')
    monkeypatch.setattr(registry.resources, "files", lambda package: tmp_path)
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(registry, "_LOADED", False)
    with pytest.raises(ValueError, match=r"Broken-Model\.json .*img_size"):
        registry.list_models()
