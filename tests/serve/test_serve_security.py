"""Hostile and careless input: bounded bodies and pixels, 4xx with messages, no path escapes, the API key."""

from __future__ import annotations

import asyncio
import base64
import socket

import httpx
import pytest
from bombs import png_bomb
from fastapi.testclient import TestClient
from serve_support import live_server

from probclip.serve import ServiceLimits, create_app


@pytest.fixture(scope="module")
def app(tiny_indexes):
    return create_app(tiny_indexes, limits=ServiceLimits(max_request_bytes=256 * 1024, max_image_bytes=128 * 1024))


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, base_url="http://localhost") as test_client:
        yield test_client


def _detail(response) -> str:
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"] and "\n" not in body["detail"]
    return body["detail"]


def test_pixel_bomb_refused_before_decoding(client):
    bomb = png_bomb()
    upload = client.post("/search", files={"image": ("bomb.png", bomb, "image/png")})
    assert upload.status_code == 413 and "refused before decoding" in _detail(upload)
    as_json = client.post("/search", json={"image": base64.b64encode(bomb).decode()})
    assert as_json.status_code == 413 and "104857600 pixels" in _detail(as_json)


def test_oversized_bodies(client, app):
    big = client.post("/search", content=b"{" + b" " * 300_000 + b"}", headers={"content-type": "application/json"})
    assert big.status_code == 413 and "262144 bytes" in _detail(big)

    def chunks():  # no Content-Length: the bound is enforced while the body streams in
        for _ in range(40):
            yield b" " * 10_000

    streamed = client.post("/search", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and "262144 bytes" in _detail(streamed)
    upload = client.post("/search", files={"image": ("big.png", b"\x89PNG" + b"\0" * 200_000, "image/png")})
    assert upload.status_code == 413


@pytest.mark.parametrize(("body", "status", "words"), [
    (b"{", 400, "malformed JSON"),
    (b"\xff\xfe", 400, "malformed JSON"),
    (b"[1, 2]", 400, "must be an object"),
    (b'{"text": "x", "k": 0}', 422, "k"),
    (b'{"text": "x", "k": 100000}', 422, "k = 100000 is too large"),
    (b'{"text": "x", "k": "many"}', 422, "k"),
    (b'{"text": "x", "score": "cosine"}', 422, "score"),
    (b'{"text": "x", "uncertainty_quantile": 1.5}', 422, "uncertainty_quantile"),
    (b'{"text": "x", "colour": "red"}', 422, "colour"),
    (b'{}', 422, "exactly one query"),
    (b'{"text": "x", "item": {"index": "collection/image", "row_id": 1}}', 422, "exactly one query"),
    (b'{"text": ""}', 422, "text must have 1 to"),
    (b'{"text": "x", "index": "collection/nothing"}', 404, "unknown index 'collection/nothing'"),
    (b'{"embedding": {"mean": [1, 0, 0], "logvar": [0, 0, 0]}}', 422, "must both have 64 values"),
    (b'{"embedding": {"mean": [1, 0], "logvar": [0]}}', 422, "must both have 64 values"),
    (b'{"item": {"index": "collection/image", "row_id": 24}}', 404, "row id '24' not in index"),
    (b'{"item": {"index": "collection/image", "row_id": -1}}', 422, "row_id"),
    (b'{"image": "not base64!!"}', 400, "not valid base64"),
    (b'{"image": "aGVsbG8gd29ybGQ="}', 400, "not a readable image"),
])
def test_bad_search_requests_get_4xx_with_a_message(client, body, status, words):
    answer = client.post("/search", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == status, answer.text
    assert words in _detail(answer)


def test_non_finite_embedding_and_wrong_content_type(client):
    mean = ", ".join(["1.0"] + ["0.0"] * 63)
    logvar = ", ".join(["0.0"] * 62 + ["NaN", "0.0"])  # Python's json accepts NaN; the service must not
    body = '{"embedding": {"mean": [' + mean + '], "logvar": [' + logvar + ']}}'
    answer = client.post("/search", content=body.encode(), headers={"content-type": "application/json"})
    assert answer.status_code == 422 and "finite" in _detail(answer)
    huge = '{"embedding": {"mean": [' + mean + '], "logvar": [' + ", ".join(["1e30"] + ["0.0"] * 63) + ']}}'
    answer = client.post("/search", content=huge.encode(), headers={"content-type": "application/json"})
    assert answer.status_code == 422 and "logvar values must lie in [-30.0, 30.0]" in _detail(answer)
    xml = client.post("/search", content=b"<q/>", headers={"content-type": "application/xml"})
    assert xml.status_code == 415 and "application/json" in _detail(xml)


@pytest.mark.parametrize("path", ["/items/collection/image/24", "/items/collection/image/-1",
                                  "/items/collection/image/1e3", "/items/collection/image/99999999999999999999",
                                  "/items/collection/image/%C2%B2", "/items/collection/image/%EF%BC%91",
                                  "/items/nothing/1", "/items/collection/image/24/image",
                                  "/items/collection/text/1/image"])
def test_unknown_indexes_and_out_of_range_ids(client, path):
    answer = client.get(path)
    assert answer.status_code == 404 and _detail(answer)


def _raw_get(base: str, path: str) -> tuple[int, bytes]:
    """GET ``path`` byte for byte (no client-side normalisation of ``..``); returns status and body."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_no_path_outside_the_collection_is_served(app, tiny_collection, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"SECRET-BYTES-" * 100)
    data_image = next((tiny_collection.parent / "data").glob("*.png"))
    relative = "../" * 12 + str(secret).lstrip("/")
    paths = [
        f"/items/{relative}/0/image",
        f"/items/collection/image/{relative}/image",
        f"/items/collection/image/0/../../../../../../../../{str(secret).lstrip('/')}",
        f"/items/{secret}/0/image",
        f"/items/{secret}/image",
        f"/items/{data_image}/0/image",
        "/items/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd/0/image",
        "/items/collection/image/%2e%2e%2f%2e%2e%2fetc%2fpasswd/image",
        "/items/..%2f..%2f..%2fetc/passwd/image",
        "/items//etc/passwd/0/image",
        "/static/../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%2fapp.py",
        f"/static/{secret}",
        "/../../../../etc/passwd",
    ]
    with live_server(app) as base:
        for path in paths:
            status, body = _raw_get(base, path)
            assert status in (400, 404), (path, status)
            assert b"SECRET-BYTES" not in body and b"root:" not in body and b"\x89PNG" not in body, path
        status, body = _raw_get(base, "/items/collection/image/0/image")
        assert status == 200 and body[:2] == b"\xff\xd8"  # the one thing served: a JPEG of an indexed image


def test_api_key_required_everywhere_but_health(tiny_indexes, monkeypatch):
    app = create_app(tiny_indexes, api_key="s3cret-key")
    guarded = [("GET", "/indices"), ("GET", "/"), ("GET", "/static/app.js"), ("GET", "/metrics"), ("GET", "/docs"),
               ("GET", "/openapi.json"), ("GET", "/items/collection/image/0"),
               ("GET", "/items/collection/image/0/image"), ("POST", "/search")]
    with TestClient(app, base_url="http://localhost") as c:
        assert c.get("/health").status_code == 200
        for method, path in guarded:
            answer = c.request(method, path, json={"text": "a red circle"} if method == "POST" else None)
            assert answer.status_code == 401 and "API key" in _detail(answer), path
            assert c.request(method, path, headers={"x-api-key": "wrong"}).status_code == 401
            ok = c.request(method, path, headers={"x-api-key": "s3cret-key"},
                           json={"text": "a red circle"} if method == "POST" else None)
            assert ok.status_code == 200, (path, ok.text)
        assert c.get("/indices", headers={"authorization": "Bearer s3cret-key"}).status_code == 200
        login = c.get("/?api_key=s3cret-key&q=a+red+circle", follow_redirects=False)
        assert login.status_code == 303 and login.headers["location"] == "/?q=a+red+circle"
        assert "HttpOnly" in login.headers["set-cookie"] and "SameSite=Strict" in login.headers["set-cookie"]
        assert c.get("/indices").status_code == 200  # the cookie set above now carries the key
        c.cookies.clear()
        assert c.get("/?api_key=nope", follow_redirects=False).status_code == 401


def test_a_flood_of_bad_requests_leaves_good_answers_intact(app, tiny_indexes):
    image_index = tiny_indexes[0]
    expected = image_index.search("a small yellow circle", k=5)[0]
    bad = [
        ("POST", "/search", {"content": b"{"}),
        ("POST", "/search", {"content": b'{"text": "x", "k": -3}'}),
        ("POST", "/search", {"content": b'{"embedding": {"mean": [1], "logvar": [1]}}'}),
        ("POST", "/search", {"content": b'{"image": "aGVsbG8="}'}),
        ("POST", "/search", {"files": {"image": ("b.png", png_bomb(2000, 2000)[:-40], "image/png")}}),
        ("POST", "/search", {"files": {"image": ("b.png", png_bomb(), "image/png")}}),
        ("POST", "/search", {"content": b" " * 300_000}),
        ("GET", "/items/collection/image/77/image", {}),
        ("GET", "/items/../../etc/passwd/0/image", {}),
        ("POST", "/search", {"content": b'{"text": "x", "index": "zzz"}'}),
    ]

    async def flood():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as ac:
            json_type = {"content-type": "application/json"}
            requests = [ac.request(m, p, headers=json_type if "content" in kw else None, **kw)
                        for _ in range(20) for m, p, kw in bad]
            answers = await asyncio.gather(*requests)
            good = await ac.post("/search", json={"text": "a small yellow circle", "k": 5})
            return answers, good

    answers, good = asyncio.run(flood())
    assert all(400 <= a.status_code < 500 for a in answers), sorted({a.status_code for a in answers})
    assert good.status_code == 200
    assert [h["row_id"] for h in good.json()["results"]] == expected.ids.tolist()
