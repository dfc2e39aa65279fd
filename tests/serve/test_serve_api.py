"""The service's endpoints against a real tiny collection: same answers as ``SearchIndex`` in-process."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from serve_support import draw_scene

from probclip.embedding import ProbEmbedding
from probclip.search import SCORES, SearchIndex, build_index
from probclip.search.results import HIGHER_IS_BETTER
from probclip.serve import ServiceLimits, create_app


@pytest.fixture(scope="module")
def client(tiny_indexes):
    with TestClient(create_app(tiny_indexes), base_url="http://localhost") as test_client:
        yield test_client


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _assert_same(hits: list[dict], expected) -> None:
    assert [h["row_id"] for h in hits] == expected.ids.tolist()
    np.testing.assert_allclose([h["score"] for h in hits], expected.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([h["uncertainty"] for h in hits], expected.uncertainty, rtol=1e-6)
    assert [h["metadata"]["caption"] for h in hits] == [m["caption"] for m in expected.metadata]


def test_health_and_indices(client, tiny_indexes):
    assert client.get("/health").json()["status"] == "ok"
    listed = client.get("/indices").json()
    assert [i["name"] for i in listed] == [ix.name for ix in tiny_indexes]
    for info, index in zip(listed, tiny_indexes, strict=True):
        assert info["modality"] == index.modality and info["rows"] == index.rows == 24
        assert info["kind"] == "flat" and info["exact"] is True and info["recall_at_10"] == 1.0
        assert info["model"] == index.model_name and info["model_fingerprint"] == index.model_fingerprint
        q = info["uncertainty_quantiles"]
        assert 0 < q["0.05"] <= q["0.5"] <= q["0.95"]


@pytest.mark.parametrize("score", ["csd", "mean", "includes", "included"])
def test_text_search_matches_in_process_search(client, tiny_indexes, score):
    image_index = tiny_indexes[0]
    answer = client.post("/search", json={"text": "a large red circle", "k": 7, "score": score,
                                          "index": image_index.name})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = image_index.search("a large red circle", k=7, score=score)[0]
    _assert_same(body["results"], expected)
    assert body["score"] == score and body["exact"] is True and body["modality"] == "image"
    assert body["higher_is_better"] is (score != "csd")
    assert body["query"]["kind"] == "text" and body["query"]["uncertainty"] > 0
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=score != "csd")
    assert all(h["image_url"] == f"/items/{image_index.name}/{h['row_id']}/image" for h in body["results"])


@pytest.mark.parametrize(("score", "options"), [("included", {"directional": False}),
                                               ("includes", {"eps": -10.0}),
                                               ("includes", {"eps": -10.0, "directional": False})])
def test_eps_and_directional_reach_the_search_over_json_and_forms(client, tiny_indexes, score, options):
    image_index = tiny_indexes[0]
    text = "a large red circle"
    expected = image_index.search(text, k=24, score=score, **options)[0]
    default = image_index.search(text, k=24, score=score)[0]
    assert (expected.ids.tolist(), expected.scores.tolist()) != (default.ids.tolist(), default.scores.tolist())
    answer = client.post("/search", json={"text": text, "k": 24, "score": score, **options})
    assert answer.status_code == 200, answer.text
    _assert_same(answer.json()["results"], expected)
    form = {"text": text, "k": "24", "score": score, **{name: str(value).lower() for name, value in options.items()}}
    answer = client.post("/search", files={name: (None, value) for name, value in form.items()})  # multipart
    assert answer.status_code == 200, answer.text
    _assert_same(answer.json()["results"], expected)
    for bad in ({"eps": 1000.0}, {"eps": "nan"}, {"directional": "sideways"}):
        answer = client.post("/search", json={"text": text, "score": score, **bad})
        assert answer.status_code == 422 and answer.json()["detail"].startswith("invalid search request:")


def test_search_options_list_the_scores_and_defaults_of_the_service(client):
    options = client.get("/search/options").json()
    assert options["scores"] == list(SCORES) and options["scores"][0] == options["defaults"]["score"] == "csd"
    assert options["higher_is_better"] == HIGHER_IS_BETTER
    assert options["defaults"] == {"k": 10, "score": "csd", "max_uncertainty": None, "uncertainty_quantile": None,
                                   "eps": 0.0, "directional": True, "hierarchy_head": True, "deduplicate": False}
    assert options["max_k"] == ServiceLimits().max_k


def test_image_upload_base64_and_embedding_queries(client, tiny_indexes):
    image_index, text_index = tiny_indexes
    query_image = draw_scene("blue", "square", "large")
    png = _png_bytes(query_image)
    expected = text_index.search(query_image, k=5)[0]
    upload = client.post("/search", files={"image": ("q.png", png, "image/png")},
                         data={"k": "5", "index": text_index.name})
    assert upload.status_code == 200, upload.text
    _assert_same(upload.json()["results"], expected)
    assert upload.json()["query"]["kind"] == "image" and upload.json()["results"][0]["image_url"] is None
    as_json = client.post("/search", json={"image": base64.b64encode(png).decode(), "k": 5, "index": text_index.name})
    assert as_json.status_code == 200 and as_json.json()["results"] == upload.json()["results"]

    stored = image_index.embedding([3])
    expected = image_index.search(stored, k=4)[0]
    by_embedding = client.post("/search", json={"embedding": {"mean": stored.mean[0].tolist(),
                                                              "logvar": stored.logvar[0].tolist()}, "k": 4})
    assert by_embedding.status_code == 200, by_embedding.text
    _assert_same(by_embedding.json()["results"], expected)
    by_item = client.post("/search", json={"item": {"index": image_index.name, "row_id": 3}, "k": 4})
    _assert_same(by_item.json()["results"], expected)
    assert by_item.json()["query"] == {"kind": "item", "index": image_index.name, "row_id": 3, "modality": "image",
                                       "uncertainty": pytest.approx(float(stored.uncertainty[0]), rel=1e-6)}


def test_uncertainty_filter(client, tiny_indexes):
    image_index = tiny_indexes[0]
    u_all = np.array([m["u"] for m in image_index.metadata(list(range(image_index.rows)))])
    body = client.post("/search", json={"text": "a small green triangle", "k": 24,
                                        "uncertainty_quantile": 0.5}).json()
    expected = image_index.search("a small green triangle", k=24, uncertainty_quantile=0.5)[0]
    _assert_same(body["results"], expected)
    assert 0 < len(body["results"]) < 24
    assert max(h["uncertainty"] for h in body["results"]) <= np.quantile(u_all, 0.5) * (1 + 1e-6)
    bound = float(np.sort(u_all)[5])
    capped = client.post("/search", json={"text": "a small green triangle", "k": 24, "max_uncertainty": bound}).json()
    assert 0 < len(capped["results"]) <= 6 and all(h["uncertainty"] <= bound for h in capped["results"])


def test_item_metadata_and_thumbnail(client, tiny_indexes):
    image_index, text_index = tiny_indexes
    info = client.get(f"/items/{image_index.name}/5").json()
    stored = image_index.metadata([5])[0]
    relative = Path(stored["source"]).name  # the tiny collection was embedded from a flat folder of images
    assert info["metadata"] == stored | {"u": pytest.approx(info["metadata"]["u"]), "source": relative}
    assert info["uncertainty"] == pytest.approx(float(image_index.search(image_index.embedding([5]), k=1)[0]
                                                      .uncertainty[0]), rel=1e-6)
    assert 0 <= info["uncertainty_percentile"] <= 1
    thumb = client.get(f"/items/{image_index.name}/5/image", params={"size": 32})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    decoded = Image.open(io.BytesIO(thumb.content)).convert("RGB")
    original = image_index.open_image(5).convert("RGB").resize(decoded.size)
    assert max(decoded.size) == 32
    difference = np.abs(np.asarray(decoded, np.int16) - np.asarray(original, np.int16)).mean()
    assert difference < 12
    text_item = client.get(f"/items/{text_index.name}/2").json()
    assert text_item["image_url"] is None and text_item["metadata"]["caption"] == text_index.metadata([2])[0]["caption"]


def test_metrics_count_requests_errors_and_batches(tiny_indexes):
    with TestClient(create_app(tiny_indexes), base_url="http://localhost") as fresh:
        for _ in range(3):
            assert fresh.post("/search", json={"text": "a red square", "k": 2}).status_code == 200
        assert fresh.post("/search", json={"text": "a red square", "index": "missing"}).status_code == 404
        text = fresh.get("/metrics").text
    assert fresh.get("/metrics").headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'probclip_http_requests_total{method="POST",route="/search",status="200"} 3' in text
    assert 'probclip_http_errors_total{route="/search",status="404"} 1' in text
    assert re.search(r'probclip_http_request_duration_seconds_count\{route="/search"\} 4(\.0)?\n', text)
    assert re.search(r'probclip_search_batch_size_count\{index="[^"]+/image"\} 3(\.0)?\n', text)


def test_openapi_documents_the_endpoints(client):
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    for path in ("/health", "/indices", "/search", "/items/{index}/{row_id}", "/items/{index}/{row_id}/image",
                 "/metrics"):
        assert path in schema["paths"], path
    body = schema["paths"]["/search"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert "SearchRequest" in schema["components"]["schemas"]


def test_simultaneous_queries_are_grouped_and_answered_individually(tiny_indexes):
    image_index = tiny_indexes[0]
    app = create_app(tiny_indexes, max_wait_s=0.2)
    captions = [f"a {s} {c} {sh}" for s in ("small", "large") for c in ("red", "blue") for sh in ("circle", "square")]

    async def fire():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as ac:
            answers = await asyncio.gather(*[ac.post("/search", json={"text": t, "k": 3}) for t in captions])
            return answers, (await ac.get("/metrics")).text

    answers, metrics = asyncio.run(fire())
    app.state.service.batcher.stop()
    for caption, answer in zip(captions, answers, strict=True):
        assert answer.status_code == 200
        _assert_same(answer.json()["results"], image_index.search(caption, k=3)[0])
    count = float(re.search(r'probclip_search_batch_size_count\{index="[^"]+"\} (\S+)', metrics).group(1))
    assert count < len(captions)  # fewer model/index calls than queries: they were grouped


class _GatedIndex:
    """The real image index, whose search waits for a gate: shows the event loop stays free meanwhile."""

    def __init__(self, index):
        self._index, self.entered, self.release = index, threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self._index, name)

    def search(self, *args, **kwargs):
        self.entered.set()
        assert self.release.wait(30)
        return self._index.search(*args, **kwargs)


def test_search_work_never_blocks_the_event_loop(tiny_indexes):
    gated = _GatedIndex(tiny_indexes[0])
    app = create_app([gated])

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as ac:
            pending = asyncio.create_task(ac.post("/search", json={"text": "a red circle", "k": 2}))
            while not gated.entered.is_set():
                await asyncio.sleep(0.01)
            start = time.perf_counter()
            health = await ac.get("/health")
            item = await ac.get(f"/items/{gated.name}/1")
            waited = time.perf_counter() - start
            assert not pending.done()
            gated.release.set()
            return health, item, waited, await pending

    health, item, waited, searched = asyncio.run(scenario())
    app.state.service.batcher.stop()
    assert health.status_code == 200 and item.status_code == 200 and waited < 5
    assert searched.status_code == 200 and len(searched.json()["results"]) == 2


def test_an_approximate_index_says_so(tiny_collection, tiny_model, tmp_path):
    copy = tmp_path / "approx"
    shutil.copytree(tiny_collection, copy, ignore=shutil.ignore_patterns("index"))
    build_index(copy, kind="hnsw", progress=False)
    index = SearchIndex.load(copy, modality="image", model=tiny_model)
    with TestClient(create_app([index]), base_url="http://localhost") as c:
        info = c.get("/indices").json()[0]
        answer = c.post("/search", json={"text": "a red circle", "k": 3}).json()
    assert info["kind"] == "hnsw" and info["exact"] is False
    assert answer["exact"] is False and len(answer["results"]) == 3


def test_an_empty_answer_says_why(client, tiny_indexes):
    text_index = tiny_indexes[1]
    dim = text_index.dim
    vague = {"mean": [1.0] + [0.0] * (dim - 1), "logvar": [3.0] * dim}  # far more uncertain than any caption
    expected = text_index.search(text_index.encode(ProbEmbedding(torch.tensor([vague["mean"]]),
                                                                 torch.tensor([vague["logvar"]]))),
                                 k=5, score="included")[0]
    assert len(expected) == 0
    body = client.post("/search", json={"index": text_index.name, "embedding": vague, "k": 5,
                                        "score": "included"}).json()
    assert body["results"] == []
    reason = body["empty_reason"]
    assert reason.startswith("no caption is more general than this embedding under this model")
    assert "more uncertain than 100% of its captions" in reason
    filtered = client.post("/search", json={"index": text_index.name, "embedding": vague, "k": 5,
                                            "score": "included", "uncertainty_quantile": 0.5}).json()
    assert "uncertainty filter" in filtered["empty_reason"]
    found = client.post("/search", json={"index": text_index.name, "text": "a red circle", "k": 5}).json()
    assert found["results"] and found.get("empty_reason") is None
