"""Image transforms from the model config, PIL mode conversion, and image-file errors that name the file."""

import numpy as np
import pytest
import torch
from PIL import Image

import probclip
from probclip.models import VisionConfig
from probclip.transforms import ImageLoadError, ToRGB, image_transform, load_image


def _gradient_image(width, height):
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8), mode="RGB")


def test_eval_transform_is_bicubic_short_side_resize_centre_crop_normalise():
    cfg = VisionConfig(image_size=32, patch_size=8, width=64, layers=1, head_width=32)
    image = _gradient_image(80, 40)
    out = image_transform(cfg)(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    resized = image.resize((64, 32), Image.BICUBIC)  # short side 40 -> 32, aspect kept
    cropped = np.asarray(resized.crop((16, 0, 48, 32)), dtype=np.float32) / 255.0
    mean, std = np.array(cfg.image_mean), np.array(cfg.image_std)
    expected = torch.from_numpy(((cropped - mean) / std).transpose(2, 0, 1)).float()
    # PIL and torchvision bicubic kernels agree to within a couple of 8-bit levels
    assert (out - expected).abs().max() < 3 / 255 / min(std)


def test_train_transform_random_resized_crop():
    cfg = probclip.models.get_model_config("ProLIP-Tiny").vision
    transform = image_transform(cfg, train=True)
    image = _gradient_image(64, 48)
    torch.manual_seed(0)
    a = transform(image)
    torch.manual_seed(1)
    b = transform(image)
    assert a.shape == b.shape == (3, 32, 32)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1"])
def test_any_pil_mode_becomes_rgb(mode):
    image = _gradient_image(20, 10).convert("L").convert(mode) if mode not in ("I;16",) else Image.fromarray(
        np.arange(200, dtype=np.uint16).reshape(10, 20) * 300)
    rgb = ToRGB()(image)
    assert rgb.mode == "RGB" and rgb.size == (20, 10)
    cfg = VisionConfig(image_size=16, patch_size=8, width=64, layers=1, head_width=32)
    assert image_transform(cfg)(image).shape == (3, 16, 16)


@pytest.mark.parametrize("mode", sorted(getattr(Image, "MODES", ["La", "RGBa", "PA", "YCbCr", "LAB", "HSV", "I;16B"])))
def test_every_pil_mode_converts(mode):
    image = Image.new(mode, (6, 4))
    assert ToRGB()(image).mode == "RGB"
    cfg = VisionConfig(image_size=16, patch_size=8, width=64, layers=1, head_width=32)
    assert image_transform(cfg)(image).shape == (3, 16, 16)


def test_premultiplied_transparent_pixels_become_white():
    for mode in ("La", "RGBa"):
        assert ToRGB()(Image.new(mode, (2, 2))).getpixel((0, 0)) == (255, 255, 255), mode


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert ToRGB()(image).getpixel((0, 0)) == (255, 255, 255)


def test_load_image_errors_name_the_file(tmp_path):
    good = tmp_path / "good.png"
    _gradient_image(30, 20).save(good)
    assert load_image(good).size == (30, 20)
    truncated = tmp_path / "truncated.jpg"
    _gradient_image(64, 64).save(tmp_path / "full.jpg", quality=95)
    truncated.write_bytes((tmp_path / "full.jpg").read_bytes()[:600])
    with pytest.raises(ImageLoadError, match="truncated.jpg"):
        load_image(truncated)
    _gradient_image(64, 64).save(tmp_path / "full.png")
    cut_png = tmp_path / "cut.png"  # header intact, pixel data cut short
    cut_png.write_bytes((tmp_path / "full.png").read_bytes()[: int((tmp_path / "full.png").stat().st_size * 0.8)])
    with pytest.raises(ImageLoadError, match=r"cut\.png \(truncated or corrupt\)"):
        load_image(cut_png)
    garbage = tmp_path / "notes.png"
    garbage.write_text("not an image")
    with pytest.raises(ImageLoadError, match="notes.png"):
        load_image(garbage)
    with pytest.raises(ImageLoadError, match="absent.png"):
        load_image(tmp_path / "absent.png")


def test_preprocess_of_pretrained_model_feeds_the_model(tmp_path):
    model = probclip.create_model("ProLIP-Tiny").eval()
    model.save_pretrained(tmp_path / "m")
    loaded, preprocess = probclip.create_model_from_pretrained(tmp_path / "m")
    batch = torch.stack([preprocess(_gradient_image(50, 70)), preprocess(Image.new("L", (33, 33), 128))])
    with torch.no_grad():
        assert loaded.encode_image(batch).shape == (2, 64)
