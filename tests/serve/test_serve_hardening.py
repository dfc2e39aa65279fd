"""The service against hostile pages and careless data: Host/Origin allow-list, API key rules, what leaves the server
(no absolute path, no repr, chosen metadata fields), thumbnails only from the collection's folders, one-line JSON
errors that keep the connection alive, bounded concurrent decodes, de-duplication, CSV export, HEAD /health."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import re
import shutil
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from serve_support import draw_scene, live_server, write_tiny_data

import probclip.serve.decode_slots as decode_slots
from probclip.embedding import ProbEmbedding
from probclip.search import SearchIndex, build_index, embed_collection
from probclip.search.results import SearchResults
from probclip.serve import ServiceLimits, create_app
from probclip.serve.dedup import MEAN_TOLERANCE, U_TOLERANCE, candidate_rows, duplicate_mask, hide_duplicates
from probclip.serve.metadata import scrub_detail


@pytest.fixture(scope="module")
def app(tiny_indexes):
    return create_app(tiny_indexes)


def _detail(response) -> str:
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str) and "\n" not in body["detail"]
    return body["detail"]


# ---------------------------------------------------------------------------------------- Host and Origin
@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST"])
def test_localhost_names_are_served(app, host):
    with TestClient(app, base_url="http://localhost") as client:
        assert client.get("/indices", headers={"host": host}).status_code == 200


def test_other_hosts_and_origins_are_refused(app, tiny_indexes):
    with TestClient(app, base_url="http://localhost") as client:
        rebound = client.get("/indices", headers={"host": "attacker.example:8000"})
        assert rebound.status_code == 400 and "--allowed-host" in _detail(rebound)
        for path in ("/", "/search", "/items/collection/image/0/image", "/knn-service", "/indices-list"):
            assert client.get(path, headers={"host": "attacker.example"}).status_code == 400, path
        assert client.get("/health", headers={"host": "10.0.0.7:8000"}).status_code == 200  # probes by address
        cross = client.post("/search", json={"text": "a red circle"}, headers={"origin": "http://attacker.example"})
        assert cross.status_code == 403 and "--cors-origin" in _detail(cross)
        assert client.post("/search", json={"text": "a red circle"},
                           headers={"origin": "http://localhost:8000"}).status_code == 200
        assert client.get("/indices", headers={"origin": "null"}).status_code == 403
    extended = create_app(tiny_indexes, allowed_hosts=["localhost", "search.example.org"])
    with TestClient(extended, base_url="http://search.example.org") as client:
        assert client.get("/indices").status_code == 200
        assert client.get("/indices", headers={"host": "other.example.org"}).status_code == 400
    with TestClient(create_app(tiny_indexes, allowed_hosts=["*"]), base_url="http://anything.example") as client:
        assert client.get("/indices").status_code == 200


# ---------------------------------------------------------------------------------------- API key rules
@pytest.mark.parametrize("key", ["", "   ", "cl\u00e9", "key with space", "k;ey", "\u5bc6\u94a5"])
def test_unusable_api_keys_are_refused_when_the_app_is_made(tiny_indexes, key):
    with pytest.raises(ValueError, match="API key"):
        with TestClient(create_app(tiny_indexes, api_key=key or " "), base_url="http://localhost"):
            pass


def test_non_ascii_keys_sent_by_a_client_are_answered_401(tiny_indexes):
    with TestClient(create_app(tiny_indexes, api_key="s3cret"), base_url="http://localhost") as client:
        assert client.get("/?api_key=%C3%A9", follow_redirects=False).status_code == 401
        assert client.get("/indices", headers={"x-api-key": "\u00e9".encode()}).status_code == 401
        assert client.get("/indices", headers={"cookie": "probclip_api_key=\u00e9".encode()}).status_code == 401


# ---------------------------------------------------------------------------------------- one-line errors, kept alive
def _exchange(conn: socket.socket, request: bytes) -> tuple[int, dict, bytes]:
    """Send one HTTP/1.1 request on an open connection; returns status, headers and the body (Content-Length)."""
    conn.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = conn.recv(65536)
        assert chunk, "the server closed the connection"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _post(path: str, body: bytes, content_type: str = "application/json") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "probclipboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    draw_scene("red", "circle", "large").save(buffer, format="JPEG")
    return buffer.getvalue()


def test_hostile_bodies_get_one_line_4xx_on_a_connection_that_stays_open(app):
    nested = b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    deep_object = b'{"text": "x", "k": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}"
    jpeg = _jpeg()
    cases = [(_post("/search", nested), 400, "nested too deeply"),
             (_post("/search", deep_object), 400, "nested too deeply"),
             (_post("/knn-service", nested, "text/plain"), 400, "nested too deeply"),
             (_post("/metadata", nested, "text/plain"), 400, "nested too deeply")]
    for cut in (3, 10, 30, 100, 200, len(jpeg) // 2):
        body, content_type = _multipart("cut.jpg", jpeg[:cut])
        cases.append((_post("/search", body, content_type), 400, "image"))
        as_json = json.dumps({"image": base64.b64encode(jpeg[:cut]).decode()}).encode()
        cases.append((_post("/search", as_json), 400, "image"))
        knn = json.dumps({"image": base64.b64encode(jpeg[:cut]).decode(), "modality": "image", "num_images": 3,
                          "indice_name": "collection"}).encode()
        cases.append((_post("/knn-service", knn, "text/plain"), 400, "image"))
    with live_server(app) as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as conn:
            for request, status, words in cases:
                got, headers, body = _exchange(conn, request)
                detail = json.loads(body)["detail"]
                assert got == status and words in detail, (request[:80], got, detail)
                assert "\n" not in detail and " at 0x" not in detail and "Traceback" not in detail
                assert headers.get("connection", "").lower() != "close"
            got, _, body = _exchange(conn, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert got == 200 and json.loads(body)["status"] == "ok"  # the same connection still answers


class _BrokenIndex:
    """A served index whose metadata reader fails like a bug would: with a path and an object's repr."""

    def __init__(self, index):
        self._index = index

    def __getattr__(self, name):
        return getattr(self._index, name)

    def metadata(self, ids):
        if list(ids) == [7]:
            raise RuntimeError("boom in /srv/secret/collection/metadata.parquet <pyarrow.Table object at 0x7f00>")
        return self._index.metadata(ids)


def test_an_unexpected_exception_is_a_one_line_500_that_keeps_the_connection(tiny_indexes):
    app = create_app([_BrokenIndex(tiny_indexes[0])])
    with live_server(app) as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as conn:
            request = b"GET /items/collection/image/7 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            status, headers, body = _exchange(conn, request)
            detail = json.loads(body)["detail"]
            assert status == 500 and "internal error (RuntimeError)" in detail
            assert "/srv/secret" not in detail and "0x7f00" not in detail and "\n" not in detail
            status, _, _ = _exchange(conn, b"GET /items/collection/image/6 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert status == 200


def test_scrub_detail_removes_paths_and_reprs():
    text = "cannot read '/home/me/data/x.png': cannot identify image file <_io.BytesIO object at 0x7f1>\nmore"
    assert scrub_detail(text) == "cannot read '<path>': cannot identify image file <object>"
    kept = "unknown index 'collection/nothing'; send application/json or multipart/form-data"
    assert scrub_detail(kept) == kept


# ---------------------------------------------------------------------------------------- metadata control
def _all_answers(base: str) -> list[str]:
    texts = [httpx.post(base + "/search", json={"text": "a red circle", "k": 24}, timeout=30).text,
             httpx.post(base + "/search", json={"text": "a red circle", "k": 24, "index": "collection/text"},
                        timeout=30).text,
             httpx.post(base + "/search?format=csv", json={"text": "a red circle", "k": 24}, timeout=30).text,
             httpx.get(base + "/items/collection/image/3").text, httpx.get(base + "/items/collection/text/3").text,
             httpx.post(base + "/knn-service", json={"text": "a red circle", "modality": "image", "num_images": 24,
                                                     "indice_name": "collection"}, timeout=30).text,
             httpx.post(base + "/metadata", json={"ids": list(range(24)), "indice_name": "collection"}).text,
             httpx.get(base + "/indices").text]
    return texts


def test_no_answer_carries_an_absolute_server_path(app, tiny_collection):
    root = str(tiny_collection.parent)
    with live_server(app) as base:
        answers = _all_answers(base)
        hit = httpx.post(base + "/search", json={"text": "a red circle", "k": 3}, timeout=30).json()["results"][0]
    for text in answers:
        assert root not in text and "/tmp/" not in text
    assert hit["metadata"]["source"].endswith(".png") and not hit["metadata"]["source"].startswith("/")


def test_metadata_fields_choose_what_is_served(tiny_indexes):
    app = create_app(tiny_indexes, metadata_fields=["caption"])
    with TestClient(app, base_url="http://localhost") as client:
        hits = client.post("/search", json={"text": "a red circle", "k": 4}).json()["results"]
        assert all(set(h["metadata"]) == {"caption"} for h in hits)
        assert set(client.get("/items/collection/image/2").json()["metadata"]) == {"caption"}
    with pytest.raises(Exception, match="'colour'"):
        create_app(tiny_indexes, metadata_fields=["caption", "colour"])


def _with_patched_source(obj, source: str):
    """``obj`` (an index or its items), with row 0's metadata naming ``source`` (the rest as stored), and its
    ``open_image`` reading through that metadata."""
    class Patched:
        def __getattr__(self, name):
            return getattr(obj, name)

        def metadata(self, ids):
            rows = obj.metadata(ids)
            return [dict(r, source=source) if int(r["row_id"]) == 0 else r for r in rows]

        def open_image(self, row_id):
            return type(obj).open_image(self, row_id)

    return Patched()


def _index_with_source(index, source: str):
    """The index, with row 0's metadata naming ``source`` for the service and for the image reader it opens with."""
    patched = _with_patched_source(index, source)
    items = _with_patched_source(index.items, source)
    type(patched).items = property(lambda self: items)
    return patched


def test_thumbnails_come_only_from_the_collection_and_its_sources(tiny_indexes, tiny_collection, tmp_path):
    outside = tmp_path / "outside.png"
    draw_scene("red", "square", "large").save(outside)
    data = tiny_collection.parent / "data"
    link = data / "zz-link-outside.png"
    link.symlink_to(outside)
    try:
        for source, status in ((str(outside), 404), (str(link), 404), (str(data / "absent.png"), 404),
                               (str(next(data.glob("red_*.png"))), 200)):
            app = create_app([_index_with_source(tiny_indexes[0], source)])
            with TestClient(app, base_url="http://localhost") as client:
                answer = client.get("/items/collection/image/0/image")
                assert answer.status_code == status, (source, answer.text)
                if status == 404:
                    detail = _detail(answer)
                    assert str(tmp_path) not in detail and str(data) not in detail and "0x" not in detail
                    item = client.get("/items/collection/image/0").json()
                    assert item["metadata"]["source"] in (None, "absent.png")
    finally:
        link.unlink()


# ---------------------------------------------------------------------------------------- bounded decodes
def test_concurrent_decodes_are_bounded(tiny_indexes, monkeypatch):
    real = decode_slots.decode_image_bytes
    active, peak, lock = [0], [0], threading.Lock()

    def slow_decode(data, limits):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        try:
            return real(data, limits)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(decode_slots, "decode_image_bytes", slow_decode)
    app = create_app(tiny_indexes, limits=ServiceLimits(max_concurrent_decodes=2))
    buffer = io.BytesIO()
    draw_scene("blue", "circle", "small").save(buffer, format="PNG")

    async def many():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            return await asyncio.gather(*[client.post("/search", files={"image": ("q.png", buffer.getvalue())},
                                                      data={"k": "3"}) for _ in range(8)])

    answers = asyncio.run(many())
    assert [a.status_code for a in answers] == [200] * 8
    assert peak[0] == 2
    assert app.state.service.decode_slots.held == 0


# ---------------------------------------------------------------------------------------- de-duplication
@pytest.fixture(scope="module")
def duplicated_indexes(tmp_path_factory, tiny_model):
    """The tiny collection plus three exact copies of two of its images (and their captions)."""
    root = tmp_path_factory.mktemp("dup-collection")
    data = root / "data"
    write_tiny_data(data)
    for name, copies in (("red_circle_small", 2), ("blue_square_large", 1)):
        for i in range(copies):
            shutil.copy(data / f"{name}.png", data / f"{name}_copy{i}.png")
            shutil.copy(data / f"{name}.txt", data / f"{name}_copy{i}.txt")
    out = embed_collection(tiny_model, data, root / "collection", modality="image", batch_size=7, num_workers=0,
                           progress=False)
    build_index(out, kind="flat", progress=False)
    return [SearchIndex.load(out, modality="image", model=tiny_model)]


def test_duplicate_mask_keeps_the_better_ranked_copy():
    mean = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0001], [0.6, 0.8], [1.0, 0.0]])
    u = np.array([0.5, 0.5, 0.5, 0.5, 0.5, 0.6])
    assert duplicate_mask(mean, u).tolist() == [False, False, True, True, False, False]  # row 5: another u
    u[2] = 0.5 * (1 + 2 * U_TOLERANCE)
    assert duplicate_mask(mean, u).tolist() == [False, False, False, True, False, False]
    assert 0 < MEAN_TOLERANCE < 1e-6 and 0 < U_TOLERANCE < 1e-3


def test_only_results_whose_u_matches_another_are_read():
    u = np.array([0.30, 0.10, 0.20, 0.10 * (1 + U_TOLERANCE / 2), 0.40, 0.30])
    assert candidate_rows(u).tolist() == [0, 1, 3, 5]
    assert candidate_rows(np.array([0.1, 0.2, 0.3])).size == 0

    class Index:
        def __init__(self):
            self.read: list[list[int]] = []

        def embedding(self, ids):
            self.read.append(ids.tolist())

            mean = torch.tensor([[1.0, 0.0] if i in (10, 15) else [0.0, 1.0] for i in ids.tolist()])
            return ProbEmbedding(mean, torch.zeros_like(mean))

    index = Index()
    ids = np.array([10, 11, 12, 13, 14, 15])
    results = SearchResults(ids=ids, scores=np.arange(6, dtype=np.float32), uncertainty=u.astype(np.float32),
                            metadata=[{"r": int(i)} for i in ids])
    shown, hidden = hide_duplicates(index, results, k=4)
    assert index.read == [[10, 11, 13, 15]]  # rows 12 and 14 have a u of their own: never read
    assert hidden == 2 and shown.ids.tolist() == [10, 11, 12, 14]  # 13 copies 11, 15 copies 10: same u and mean
    assert [m["r"] for m in shown.metadata] == [10, 11, 12, 14]


def test_deduplicate_hides_copies_in_both_apis(duplicated_indexes):
    index = duplicated_indexes[0]
    with TestClient(create_app(duplicated_indexes), base_url="http://localhost") as client:
        for query in ({"text": "a small red circle"}, {"item": {"index": index.name, "row_id": 0}}):
            full = client.post("/search", json={**query, "k": 27}).json()["results"]
            assert len(full) == 27
            deduped = client.post("/search", json={**query, "k": 27, "deduplicate": True}).json()
            ids = [h["row_id"] for h in deduped["results"]]
            assert len(ids) == 24 and deduped["query"]["duplicates_hidden"] == 3
            emb = index.embedding(ids)
            rows = np.concatenate([emb.mean.numpy(), emb.logvar.numpy()], axis=1)
            assert len(np.unique(rows, axis=0)) == 24  # no two shown items share an embedding
            kept = [h["row_id"] for h in full if h["row_id"] in ids]
            assert kept == ids  # the same order, less the copies
            top = client.post("/search", json={**query, "k": 5, "deduplicate": True}).json()["results"]
            assert [h["row_id"] for h in top] == ids[:5]  # k results even when copies were among the first k
            knn = client.post("/knn-service", json={**({"text": query["text"]} if "text" in query else
                                                       {"embedding_input": index.embedding([0]).mean[0].tolist()}),
                                                    "modality": "image", "num_images": 27,
                                                    "indice_name": "collection", "deduplicate": True}).json()
            if "text" in query:
                assert [r["id"] for r in knn] == ids
            else:
                assert len(knn) == 24


# ---------------------------------------------------------------------------------------- export and probes
def test_search_as_csv_lists_the_json_results_in_order(app):
    with TestClient(app, base_url="http://localhost") as client:
        body = {"text": "a small red circle", "k": 6}
        as_json = client.post("/search", json=body).json()
        answer = client.post("/search?format=csv", json=body)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
        assert "attachment" in answer.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(answer.text)))
        assert [int(r["row_id"]) for r in rows] == [h["row_id"] for h in as_json["results"]]
        assert [r["caption"] for r in rows] == [h["metadata"]["caption"] for h in as_json["results"]]
        assert float(rows[0]["score"]) == pytest.approx(as_json["results"][0]["score"])
        form = client.post("/search?format=csv", files={"text": (None, "a small red circle"), "k": (None, "6")})
        assert list(csv.DictReader(io.StringIO(form.text)))[0]["row_id"] == rows[0]["row_id"]
        bad = client.post("/search?format=xml", json=body)
        assert bad.status_code == 422 and "format" in _detail(bad)


def test_csv_cells_that_a_spreadsheet_would_run_are_quoted():
    from probclip.serve.export import results_csv

    text = results_csv({"results": [{"row_id": 1, "score": 0.5, "uncertainty": 0.1, "uncertainty_percentile": 0.2,
                                     "image_url": None, "metadata": {"caption": "=HYPERLINK(\"x\")", "u": -1.5}}]})
    row = list(csv.DictReader(io.StringIO(text)))[0]
    assert row["caption"] == "'=HYPERLINK(\"x\")" and row["u"] == "-1.5" and row["rank"] == "1"


def test_head_health_answers_200(app):
    with live_server(app) as base:
        head = httpx.head(base + "/health")
        assert head.status_code == 200 and head.content == b""


def test_an_image_whose_resize_would_explode_is_refused_from_its_header(app):
    thin = io.BytesIO()
    Image.new("RGB", (100_000, 1), (200, 30, 30)).save(thin, format="PNG")
    assert len(thin.getvalue()) < 2000
    with TestClient(app, base_url="http://localhost") as client:
        answer = client.post("/search", files={"image": ("thin.png", thin.getvalue())})
        assert answer.status_code == 413
        assert "100000 x 1 pixels refused before decoding" in _detail(answer) and "32 pixels" in _detail(answer)
        wide = io.BytesIO()
        Image.new("RGB", (1600, 40), (200, 30, 30)).save(wide, format="PNG")  # 1280 x 32 once resized, 40:1: served
        assert client.post("/search", files={"image": ("wide.png", wide.getvalue())}).status_code == 200


def test_no_error_answer_echoes_a_server_path_or_a_repr(app, tiny_collection, tmp_path):
    root = str(tiny_collection.parent)
    jpeg = _jpeg()
    requests = [
        ("GET", "/items/collection/image/99", {}), ("GET", "/items/collection/image/x/image", {}),
        ("GET", "/items/collection/text/1/image", {}), ("GET", "/items/nothing/1", {}),
        ("GET", "/items/collection/image/1/image?size=9999", {}), ("GET", "/nothing", {}),
        ("POST", "/search", {"content": b"{"}), ("POST", "/search", {"content": b"[1]"}),
        ("POST", "/search", {"json": {"text": "x", "k": 0}}), ("POST", "/search", {"json": {"text": "x", "q": 1}}),
        ("POST", "/search", {"json": {"image": base64.b64encode(jpeg[:40]).decode()}}),
        ("POST", "/search", {"json": {"image": base64.b64encode(b"GIF89a" + b"\0" * 20).decode()}}),
        ("POST", "/search", {"files": {"image": ("a.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 30)}}),
        ("POST", "/search", {"json": {"item": {"index": "collection/image", "row_id": 10**6}}}),
        ("POST", "/search", {"content": b"<x/>", "headers": {"content-type": "application/xml"}}),
        ("POST", "/search?format=pdf", {"json": {"text": "x"}}),
        ("POST", "/knn-service", {"content": b"{"}), ("POST", "/knn-service", {"json": {"modality": "audio"}}),
        ("POST", "/knn-service", {"json": {"text": "x", "indice_name": str(tiny_collection)}}),
        ("POST", "/metadata", {"json": {"ids": [10**6], "indice_name": "collection"}}),
        ("POST", "/metadata", {"json": {"ids": "all"}}),
    ]
    with TestClient(app, base_url="http://localhost") as client:
        for method, path, kwargs in requests:
            answer = client.request(method, path, **kwargs)
            assert 400 <= answer.status_code < 500, (path, answer.status_code, answer.text)
            detail = _detail(answer)
            assert root not in detail and " at 0x" not in detail and "Traceback" not in detail, (path, detail)
            assert not re.search(r"<[\w.]+ object", detail), (path, detail)
