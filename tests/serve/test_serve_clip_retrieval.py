"""clip-retrieval users' code against probclip serve: its real ``ClipClient`` and its built web front end.

``clip-retrieval`` is installed without its dependencies (``pip install --no-deps clip-retrieval``; its own pins
need an old torch): ``clip_client.py`` needs only ``requests``, and is loaded from the installed package by file,
because the package's ``__init__`` imports its whole back end. The front end is the package's ``front/build``
folder, served here the way ``clip_front.py`` serves it (the files, plus a ``config.json`` naming the back end).
"""

from __future__ import annotations

import base64
import functools
import http.server
import importlib.util
import json
import socketserver
import threading
from pathlib import Path

import httpx
import pytest
from serve_support import draw_scene, live_server

from probclip.serve import create_app
from probclip.serve.clip_compat import similarity_from_csd

INSTALL_HINT = "install it with `pip install --no-deps clip-retrieval` (see docs/serve.md)"


def _clip_retrieval_dir() -> Path:
    spec = importlib.util.find_spec("clip_retrieval")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"the clip-retrieval package is not installed: {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def _clip_client_module():
    """clip_retrieval/clip_client.py of the installed package, imported alone (not through the package)."""
    path = _clip_retrieval_dir() / "clip_client.py"
    spec = importlib.util.spec_from_file_location("clip_retrieval_clip_client", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def app(tiny_indexes):
    return create_app(tiny_indexes)


def _search_ids(base: str, **body) -> list[dict]:
    answer = httpx.post(base + "/search", json={"score": "csd", **body}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_the_real_clip_client_gets_the_order_of_search(app, tiny_indexes, tmp_path):
    clip_client = _clip_client_module()
    image_file = tmp_path / "query.png"
    draw_scene("blue", "square", "large").save(image_file)
    with live_server(app) as base:
        for modality, index_name in ((clip_client.Modality.IMAGE, "collection/image"),
                                     (clip_client.Modality.TEXT, "collection/text")):
            for dedup in (True, False):
                client = clip_client.ClipClient(url=base + "/knn-service", indice_name="collection",
                                                modality=modality, num_images=10, deduplicate=dedup)
                for query in ({"text": "a small red circle"}, {"image": str(image_file)}):
                    got = client.query(**query)
                    body = {"text": query["text"]} if "text" in query else \
                        {"image": base64.b64encode(image_file.read_bytes()).decode()}
                    expected = _search_ids(base, index=index_name, k=10, deduplicate=dedup, **body)
                    assert isinstance(got, list) and len(got) == len(expected["results"]) > 0, got
                    assert [r["id"] for r in got] == [h["row_id"] for h in expected["results"]]
                    query_u = expected["query"]["uncertainty"]
                    for item, hit in zip(got, expected["results"]):
                        assert item["similarity"] == pytest.approx(similarity_from_csd(hit["score"], query_u))
                        assert item["caption"] == hit["metadata"]["caption"]
                        assert item["uncertainty"] == pytest.approx(hit["uncertainty"])
                        if modality is clip_client.Modality.IMAGE:
                            assert item["url"] == base + hit["image_url"]
                            assert httpx.get(item["url"], timeout=10).headers["content-type"] == "image/jpeg"
                        else:
                            assert item["url"] is None
                    similarities = [r["similarity"] for r in got]
                    assert similarities == sorted(similarities, reverse=True)
        index = tiny_indexes[0]
        vector = index.embedding([3]).mean[0].tolist()
        client = clip_client.ClipClient(url=base + "/knn-service", indice_name="collection", num_images=5,
                                        deduplicate=False)
        by_vector = client.query(embedding_input=vector)
        assert [r["id"] for r in by_vector] == index.search(index.embedding([3]), k=5)[0].ids.tolist()
        assert by_vector[0]["id"] == 3


def test_knn_service_names_what_it_ignores_and_never_fetches(app):
    with live_server(app) as base:
        assert httpx.get(base + "/indices-list").json() == ["collection"]
        body = {"text": "a red circle", "modality": "image", "num_images": 5, "indice_name": "collection",
                "use_safety_model": True, "use_violence_detector": True, "use_mclip": False, "aesthetic_score": 9,
                "aesthetic_weight": 0.5, "image_url": "http://198.51.100.7/x.png", "num_result_ids": 5000,
                "colour": "red"}
        answer = httpx.post(base + "/knn-service", content=json.dumps(body), timeout=30,
                            headers={"content-type": "text/plain;charset=UTF-8"})  # what the front end sends
        assert answer.status_code == 200, answer.text
        ignored = answer.headers["x-probclip-ignored"]
        for name in ("use_safety_model", "use_violence_detector", "aesthetic_score", "aesthetic_weight",
                     "image_url", "colour"):
            assert name in ignored
        assert "use_mclip" not in ignored  # false: nothing was asked for
        assert "num_result_ids 5000 -> 1000" in answer.headers["x-probclip-adjusted"]
        only_url = httpx.post(base + "/knn-service", json={"image_url": "http://198.51.100.7/x.png",
                                                            "modality": "image", "num_images": 3,
                                                            "indice_name": "collection"}, timeout=30)
        assert only_url.status_code == 422 and "never fetched" in only_url.json()["detail"]
        wrong = httpx.post(base + "/knn-service", json={"text": "x", "modality": "text", "num_images": 3,
                                                         "indice_name": "collection/image"}, timeout=30)
        assert wrong.status_code == 422 and "holds images" in wrong.json()["detail"]
        unknown = httpx.post(base + "/knn-service", json={"text": "x", "modality": "image", "num_images": 3,
                                                           "indice_name": "laion5B"}, timeout=30)
        assert unknown.status_code == 404 and "laion5B" in unknown.json()["detail"]
        meta = httpx.post(base + "/metadata", content=json.dumps({"ids": [4, 2], "indice_name": "collection"}))
        assert [m["id"] for m in meta.json()] == [4, 2]
        assert meta.json()[0]["metadata"]["url"] == base + "/items/collection/image/4/image"
        assert not meta.json()[0]["metadata"]["source"].startswith("/")


def test_knn_service_requires_the_api_key(tiny_indexes):
    with live_server(create_app(tiny_indexes, api_key="k3y")) as base:
        body = {"text": "a red circle", "modality": "image", "num_images": 3, "indice_name": "collection"}
        assert httpx.post(base + "/knn-service", json=body).status_code == 401
        assert httpx.get(base + "/indices-list").status_code == 401
        assert httpx.post(base + "/metadata", json={"ids": [1], "indice_name": "collection"}).status_code == 401
        ok = httpx.post(base + "/knn-service", json=body, headers={"x-api-key": "k3y"}, timeout=30)
        assert ok.status_code == 200 and len(ok.json()) == 3


class _FrontHandler(http.server.SimpleHTTPRequestHandler):
    """clip_front.py's routes: the built files, and config.json naming the back end."""

    def __init__(self, *args, directory: str, config: dict, **kwargs):
        self.config = config
        super().__init__(*args, directory=directory, **kwargs)

    def do_GET(self):  # noqa: N802 - the http.server interface
        if self.path.split("?")[0] == "/config.json":
            body = json.dumps(self.config).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_clip_retrievals_front_end_shows_probclips_results(tiny_indexes):
    playwright = pytest.importorskip("playwright.sync_api")
    front = _clip_retrieval_dir().parent / "front" / "build"
    assert (front / "index.html").is_file(), f"clip-retrieval's built front end is missing from {front}"
    config: dict = {"defaultIndex": "collection", "urlColumn": "url"}
    handler = functools.partial(_FrontHandler, directory=str(front), config=config)
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler) as front_server:
        threading.Thread(target=front_server.serve_forever, daemon=True).start()
        front_url = f"http://127.0.0.1:{front_server.server_address[1]}"
        app = create_app(tiny_indexes, cors_origins=[front_url])
        try:
            with live_server(app) as base:
                config["defaultBackend"] = base
                expected = _search_ids(base, index="collection/image", text="a small red circle", k=24,
                                       deduplicate=True)
                with playwright.sync_playwright() as p:
                    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
                    page = browser.new_page()
                    page.goto(front_url + "/?query=a%20small%20red%20circle")
                    shown = page.locator("img[src*='/items/collection/image/']")
                    shown.first.wait_for(timeout=20_000)
                    page.wait_for_function("n => document.querySelector('clip-front').shadowRoot"
                                           ".querySelectorAll('img').length >= n",
                                           arg=len(expected["results"]), timeout=20_000)
                    sources = [shown.nth(i).get_attribute("src") for i in range(shown.count())]
                    page.wait_for_function("n => [...document.querySelector('clip-front').shadowRoot"
                                           ".querySelectorAll('img')].filter(e => e.complete).length >= n",
                                           arg=len(expected["results"]), timeout=20_000)  # loaded or failed
                    loaded = [shown.nth(i).evaluate("e => e.complete && e.naturalWidth > 0")
                              for i in range(shown.count())]
                    first_caption = expected["results"][0]["metadata"]["caption"]
                    caption_shown = page.get_by_text(first_caption, exact=True).first.is_visible()
                    browser.close()
        finally:
            front_server.shutdown()
    assert sources == [base + h["image_url"] for h in expected["results"]]
    assert all(loaded)
    assert caption_shown


def test_cors_is_off_by_default_and_opt_in_per_origin(tiny_indexes, app):
    origin = "http://localhost:1235"
    with live_server(app) as base:
        plain = httpx.get(base + "/indices-list", headers={"origin": origin})
        assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers
    allowed = create_app(tiny_indexes, cors_origins=[origin], api_key="k3y")
    with live_server(allowed) as base:
        preflight = httpx.options(base + "/knn-service", headers={
            "origin": origin, "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, x-api-key"})
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == origin
        refused = httpx.get(base + "/indices-list", headers={"origin": origin})
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == origin
        ok = httpx.get(base + "/indices-list", headers={"origin": origin, "x-api-key": "k3y"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == origin
        other = httpx.get(base + "/indices-list", headers={"origin": "http://evil.example", "x-api-key": "k3y"})
        assert other.status_code == 403 and "access-control-allow-origin" not in other.headers

