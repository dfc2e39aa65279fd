"""The service and its page where the collection carries a hierarchy head: the answer says what ranked it and the
head's probability, the page's number explains that probability, and an empty answer names the head's check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import expect, sync_playwright
from serve_support import live_server

from probclip.hierarchy_head import TERMS, HierarchyHead, PairWeights
from probclip.search import SearchIndex, build_index
from probclip.search.collection_head import carry_head
from probclip.search.writer import write_collection
from probclip.serve import create_app
from probclip.serve.explain import empty_reason

CHROMIUM = "/usr/bin/chromium"
D = 8


def _gaussians(n: int, seed: int):
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal((n, D)).astype(np.float32)
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    return mean, (rng.standard_normal((n, D)) * 0.7 - 3).astype(np.float32)


@pytest.fixture(scope="module")
def indexes(tmp_path_factory):
    """A random text + image collection whose head ranks text_in_text, and image_in_text with a bias so low that no
    caption is more general than an image under it."""
    root = tmp_path_factory.mktemp("headed") / "c"
    record = {"name": "random-gaussians", "config_hash": "0" * 16, "fingerprint": "f" * 16, "embed_dim": D,
              "source": None}
    write_collection(root, {"text": _gaussians(80, 0), "image": _gaussians(30, 1)}, model=record, dtype="float32",
                     captions={"text": [f"caption {i}" for i in range(80)]})
    rng = np.random.default_rng(0)
    head = HierarchyHead({"text_in_text": PairWeights(rng.normal(size=(len(TERMS), D)) * 0.2, 0.1, "random"),
                          "image_in_text": PairWeights(np.zeros((len(TERMS), D)), -50.0, "never")})
    carry_head(root, head.to_file(root.parent / "head.safetensors"))
    build_index(root, kind="flat", progress=False)
    return SearchIndex.load(root, "text"), SearchIndex.load(root, "image")


@pytest.fixture(scope="module")
def client(indexes):
    with TestClient(create_app(list(indexes)), base_url="http://localhost") as test_client:
        yield test_client


def test_the_answer_says_the_head_ranked_it_with_its_probabilities(client, indexes):
    texts, _ = indexes
    body = client.post("/search", json={"item": {"index": texts.name, "row_id": 3}, "index": texts.name,
                                        "score": "included", "k": 5}).json()
    expected = texts.search(texts.embedding([3]), k=5, score="included", query_modality="text")[0]
    assert body["ranked_by"] == expected.ranked_by == "hierarchy head" and body["query"]["modality"] == "text"
    assert [hit["row_id"] for hit in body["results"]] == expected.ids.tolist() and body["results"]
    for hit in body["results"]:
        assert hit["probability"] == pytest.approx(1 / (1 + np.exp(-hit["score"])), rel=1e-6)
    plain = client.post("/search", json={"item": {"index": texts.name, "row_id": 3}, "index": texts.name,
                                         "score": "included", "k": 5, "hierarchy_head": False}).json()
    assert plain["ranked_by"] == "inclusion test" and all(hit["probability"] is None for hit in plain["results"])
    by_numbers = client.post("/search", json={"embedding": {"mean": texts.embedding([3]).mean[0].tolist(),
                                                            "logvar": texts.embedding([3]).logvar[0].tolist()},
                                              "index": texts.name, "score": "included", "k": 5}).json()
    assert by_numbers["ranked_by"] == "inclusion test"  # an embedding of unknown origin: the head cannot rank it
    told = client.post("/search", json={"embedding": {"mean": texts.embedding([3]).mean[0].tolist(),
                                                      "logvar": texts.embedding([3]).logvar[0].tolist(),
                                                      "modality": "text"},
                                        "index": texts.name, "score": "included", "k": 5}).json()
    assert told["ranked_by"] == "hierarchy head" and [h["row_id"] for h in told["results"]] == expected.ids.tolist()
    table = client.post("/search?format=csv", json={"item": {"index": texts.name, "row_id": 3}, "index": texts.name,
                                                    "score": "included", "k": 5}).text.splitlines()
    assert table[0].startswith("rank,row_id,score,probability,uncertainty,")
    assert float(table[1].split(",")[3]) == pytest.approx(body["results"][0]["probability"])
    csd = client.post("/search", json={"item": {"index": texts.name, "row_id": 3}, "index": texts.name}).json()
    assert csd["ranked_by"] == "closed-form sampled distance"


def test_an_empty_answer_names_the_heads_check(client, indexes):
    texts, images = indexes
    body = client.post("/search", json={"item": {"index": images.name, "row_id": 0}, "index": texts.name,
                                        "score": "included"}).json()
    assert body["results"] == [] and body["ranked_by"] == "hierarchy head"
    assert body["empty_reason"] == ("no caption is more general than this item under this collection's hierarchy "
                                    "head: none has P > 0.5")
    assert empty_reason("includes", "text", 0.1, "text", 0.5, 0.1, False, "reverse") == (
        "no caption is more specific than this caption under this collection's hierarchy head: none is more "
        "probably more specific than more general")
    plain = client.post("/search", json={"item": {"index": images.name, "row_id": 0}, "index": texts.name,
                                         "score": "included", "hierarchy_head": False}).json()
    assert plain["ranked_by"] == "inclusion test"
    assert plain.get("empty_reason") is None or "hierarchy head" not in plain["empty_reason"]


def test_the_page_explains_the_heads_probability(indexes):
    texts, images = indexes
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: install Debian's chromium package (see .ci/run)"
    with live_server(create_app(list(indexes))) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(f"{base}/?index={texts.name}&item={texts.name}:3&score=included")
        cards = page.locator("#results .card")
        expected = texts.search(texts.embedding([3]), k=24, score="included", query_modality="text")[0]
        expect(cards).to_have_count(len(expected))
        expect(page.locator("#status")).to_contain_text("more general by the hierarchy head")
        value = cards.first.locator(".scoreval")
        shown = value.inner_text()
        assert shown.startswith("P ") and float(shown[2:]) == pytest.approx(float(expected.probabilities[0]), abs=6e-3)
        title = value.get_attribute("title")
        assert title.startswith("hierarchy head: the probability that this item is more general than the query")
        assert "logit" in title
        page.goto(f"{base}/?index={texts.name}&item={images.name}:0&score=included")
        expect(page.locator("#empty-reason")).to_have_text(
            "no caption is more general than this item under this collection's hierarchy head: none has P > 0.5")
        assert errors == []
        browser.close()
