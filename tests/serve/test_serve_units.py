"""Units of the service that need no collection: image limits, the metrics registry, the options."""

from __future__ import annotations

import io

import pytest
from bombs import png_bomb
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient
from PIL import Image, ImageFile
from prometheus_client.parser import text_string_to_metric_families
from starlette.exceptions import HTTPException

from probclip.errors import InputError, UsageError
from probclip.search.collection_head import HeadFileError
from probclip.search.layout import ShardFileError
from probclip.serve import create_app
from probclip.serve.cli import build_parser, limits_from_args
from probclip.serve.errors import ERROR_TABLE, ServiceError
from probclip.serve.limits import ImageTooLargeError, ServiceLimits, decode_image_bytes, image_header_size
from probclip.serve.metrics import ServiceMetrics
from probclip.serve.middleware import RequestTooLargeError


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


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` of a Prometheus text exposition, read by prometheus_client."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_render_prometheus_text_with_the_service_names():
    metrics = ServiceMetrics()
    metrics.requests.labels("POST", "/a", "200").inc()
    metrics.requests.labels("POST", "/a", "200").inc()
    metrics.errors.labels('/b"q', "404").inc(3)
    for value in (0.0005, 0.05, 0.5, 7.0):
        metrics.latency.labels("/a").observe(value)
    metrics.observe_batch("c/image", 3, 0.01)
    text = metrics.render().decode()
    assert "# TYPE probclip_http_requests_total counter" in text
    assert "# TYPE probclip_http_request_duration_seconds histogram" in text
    samples = _samples(text)
    assert {name for name, _ in samples} == {
        "probclip_http_requests_total", "probclip_http_errors_total",
        *(f"probclip_http_request_duration_seconds{s}" for s in ("_bucket", "_count", "_sum")),
        *(f"probclip_search_batch_size{s}" for s in ("_bucket", "_count", "_sum")),
        *(f"probclip_search_batch_seconds{s}" for s in ("_bucket", "_count", "_sum")),
    }  # the names of the hand-written registry it replaced; no *_created series
    assert samples["probclip_http_requests_total", (("method", "POST"), ("route", "/a"), ("status", "200"))] == 2
    assert samples["probclip_http_errors_total", (("route", '/b"q'), ("status", "404"))] == 3
    bucket = "probclip_http_request_duration_seconds_bucket"
    assert samples[bucket, (("le", "0.001"), ("route", "/a"))] == 1
    assert samples[bucket, (("le", "1.0"), ("route", "/a"))] == 3
    assert samples[bucket, (("le", "+Inf"), ("route", "/a"))] == 4
    assert samples["probclip_http_request_duration_seconds_sum", (("route", "/a"),)] == pytest.approx(7.5505)
    assert samples["probclip_search_batch_size_bucket", (("index", "c/image"), ("le", "3.0"))] == 1
    assert samples["probclip_search_batch_size_bucket", (("index", "c/image"), ("le", "2.0"))] == 0


def test_two_apps_in_one_process_keep_their_own_metrics():
    first, second = ServiceMetrics(), ServiceMetrics()  # no "Duplicated timeseries" error: one registry each
    first.requests.labels("GET", "/health", "200").inc()
    assert first.registry.get_sample_value(
        "probclip_http_requests_total", {"method": "GET", "route": "/health", "status": "200"}) == 1
    assert second.registry.get_sample_value(
        "probclip_http_requests_total", {"method": "GET", "route": "/health", "status": "200"}) is None


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


def _raising_app(tiny_indexes, errors: dict[str, Exception]):
    app = create_app(tiny_indexes)
    def raiser(err: Exception):
        async def raise_it():
            raise err
        return raise_it

    for name, err in errors.items():
        app.add_api_route(f"/raise/{name}", raiser(err))
    return app


def test_every_row_of_the_error_table_answers_its_status_in_one_json_line(tiny_indexes):
    samples = {
        "ServiceError": (ServiceError(404, "unknown thing at /srv/data/x.png\nsecond line"), 404),
        "ImageTooLargeError": (ImageTooLargeError("image of 9 MB refused\nmore"), 413),
        "RequestTooLargeError": (RequestTooLargeError(10), 413),
        "UsageError": (UsageError("bad option 'x' for <object at 0x7f00dead>; expected y"), 400),
        "InputError": (InputError("unreadable /home/someone/secret/file.csv"), 400),
        "ShardFileError": (ShardFileError("shard file /srv/c/img_emb/img_emb_0.npy was replaced\nmore"), 503),
            "HeadFileError": (HeadFileError("hierarchy head /srv/c/hierarchy_head.safetensors is missing\nmore"), 503),
        "RequestValidationError": (RequestValidationError([{"loc": ("body", "k"), "msg": "too big"}]), 422),
        "HTTPException": (HTTPException(418, "teapot"), 418),
    }
    assert {rule.error.__name__ for rule in ERROR_TABLE} == set(samples)
    app = _raising_app(tiny_indexes, {name: err for name, (err, _) in samples.items()}
                       | {"unexpected": RuntimeError("boom in /opt/probclip/secret.py")})
    with TestClient(app, base_url="http://localhost") as client:
        for name, (_, status) in samples.items():
            answer = client.get(f"/raise/{name}")
            assert answer.status_code == status, name
            assert answer.headers["content-type"] == "application/json"
            detail = answer.json()["detail"]
            assert set(answer.json()) == {"detail"} and "\n" not in detail and detail, name
            assert "/srv/" not in detail and "/home/" not in detail and "0x7f" not in detail, detail
        assert client.get("/raise/RequestValidationError").json()["detail"] == "invalid search request: k: too big"
        answer = client.get("/raise/unexpected")  # not in the table: a one-line 500 that names no file
        assert answer.status_code == 500 and "/opt/" not in answer.json()["detail"]
        assert answer.json()["detail"].startswith("internal error (RuntimeError)")
        assert client.get("/health").status_code == 200  # the same client goes on
