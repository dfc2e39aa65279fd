"""Units of the service that need no collection: image limits, the metrics registry, the options."""

from __future__ import annotations

import io
import re

import pytest
from bombs import png_bomb
from PIL import Image, ImageFile

from probclip.errors import InputError
from probclip.serve.cli import build_parser, limits_from_args
from probclip.serve.limits import ImageTooLargeError, ServiceLimits, decode_image_bytes, image_header_size
from probclip.serve.metrics import Counter, Histogram, MetricsRegistry


def _png(width: int, height: int, colour=(200, 10, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_png_bomb_is_small_and_claims_over_100_megapixels():
    data = png_bomb()
    fmt, width, height = image_header_size(data)
    assert fmt == "PNG" and width * height >= 100_000_000
    assert len(data) < 64 * 1024


def test_bomb_refused_before_any_pixel_is_decoded(monkeypatch):
    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageTooLargeError, match=r"10240 x 10240 = 104857600 pixels refused before decoding"):
        decode_image_bytes(png_bomb(), ServiceLimits())


def test_decode_within_limits_and_refusals():
    limits = ServiceLimits(max_image_pixels=100 * 100, max_image_bytes=50_000)
    image = decode_image_bytes(_png(100, 100), limits)
    assert image.mode == "RGB" and image.size == (100, 100) and image.getpixel((5, 5)) == (200, 10, 10)
    with pytest.raises(ImageTooLargeError, match="10100 pixels refused"):
        decode_image_bytes(_png(101, 100), limits)
    with pytest.raises(ImageTooLargeError, match="bytes refused"):
        decode_image_bytes(b"\x89PNG" + b"\x00" * 60_000, limits)
    with pytest.raises(InputError, match="not a readable image"):
        decode_image_bytes(b"GIF89a but not really an image", limits)
    with pytest.raises(InputError, match="empty"):
        decode_image_bytes(b"", limits)
    truncated = _png(100, 100)[:60]
    with pytest.raises(InputError):
        decode_image_bytes(truncated, limits)


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="max_k"):
        ServiceLimits(max_k=0)


def test_metrics_render_prometheus_text():
    registry = MetricsRegistry()
    counter = registry.register(Counter("x_total", "Things.", ("route", "status")))
    histogram = registry.register(Histogram("x_seconds", "Time.", ("route",), buckets=(0.1, 1.0)))
    counter.inc("/a", "200")
    counter.inc("/a", "200")
    counter.inc('/b"q', "404", amount=3)
    for value in (0.05, 0.1, 0.5, 7.0):
        histogram.observe(value, "/a")
    text = registry.render()
    assert "# TYPE x_total counter" in text and "# TYPE x_seconds histogram" in text
    assert 'x_total{route="/a",status="200"} 2' in text
    assert 'x_total{route="/b\\"q",status="404"} 3' in text
    assert 'x_seconds_bucket{route="/a",le="0.1"} 2' in text
    assert 'x_seconds_bucket{route="/a",le="1"} 3' in text
    assert 'x_seconds_bucket{route="/a",le="+Inf"} 4' in text
    assert 'x_seconds_count{route="/a"} 4' in text
    total = float(re.search(r'x_seconds_sum\{route="/a"\} (\S+)', text).group(1))
    assert total == pytest.approx(7.65)
    assert histogram.count("/a") == 4 and counter.value("/a", "200") == 2
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Counter("x_total", "again"))
    with pytest.raises(ValueError, match="only goes up"):
        counter.inc("/a", "200", amount=-1)


def test_serve_options_default_to_loopback_and_bounded_limits():
    args = build_parser().parse_args(["somewhere"])
    assert args.host == "127.0.0.1" and args.port == 8000 and args.api_key is None
    limits = limits_from_args(args)
    assert limits.max_request_bytes == 16 * 1024 * 1024 and limits.max_image_pixels == 40_000_000
    args = build_parser().parse_args(["somewhere", "--max-image-megapixels", "0"])
    with pytest.raises(ValueError, match="max-image-megapixels"):
        limits_from_args(args)


def test_empty_reason_names_the_direction_and_the_numbers():
    from probclip.serve.explain import empty_reason

    reason = empty_reason("included", "image", 0.29, "text", 1.0, 0.012, False)
    assert reason == ("no caption is more general than this image under this model: the image is more uncertain "
                      "than 100% of its captions (u 0.29 vs median 0.012), and a more general caption must be more "
                      "uncertain than the image")
    specific = empty_reason("includes", "text", 0.001, "image", 0.0, 0.3, True)
    assert specific.startswith("no image is more specific than this caption under this model among the items the "
                               "uncertainty filter keeps")
    assert "less uncertain than 100% of its images" in specific
    assert empty_reason("csd", "text", 0.1, "text", 0.5, 0.1, False) is None
    assert empty_reason("csd", "text", 0.1, "text", 0.5, 0.1, True).startswith("no captions match")
