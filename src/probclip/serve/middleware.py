"""ASGI middleware of the service: metrics and security headers, the API key, the request-body bound.

They are plain ASGI callables (no buffering of responses), so streaming and large thumbnails pass through.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode

from .metrics import ServiceMetrics

__all__ = ["MetricsMiddleware", "ApiKeyMiddleware", "BodyLimitMiddleware", "InternalErrorMiddleware",
           "RequestTooLargeError", "check_api_key",
           "API_KEY_HEADER", "API_KEY_COOKIE", "API_KEY_QUERY", "OPEN_PATHS"]

API_KEY_HEADER = "x-api-key"
API_KEY_COOKIE = "probclip_api_key"
API_KEY_QUERY = "api_key"
#: Paths answered without the API key.
OPEN_PATHS = ("/health",)

#: Headers added to every answer.
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
#: The web page loads only its own scripts, styles and images.
PAGE_CSP = (b"content-security-policy",
            b"default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
            b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


async def _send_json(send, status: int, detail: str, extra_headers: list | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": body})


class RequestTooLargeError(Exception):
    """Raised by the wrapped ``receive`` once a request body exceeds the bound (answered with 413)."""

    def __init__(self, limit: int):
        super().__init__(f"request body larger than {limit} bytes refused; send at most {limit} bytes")
        self.limit = limit


class MetricsMiddleware:
    """Counts requests and errors and times them by route template; adds security headers to every answer."""

    def __init__(self, app, metrics: ServiceMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status_holder = {"status": 500}
        is_page = scope["path"] == "/" or scope["path"].startswith("/static/")

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                headers = list(message.get("headers", [])) + SECURITY_HEADERS + ([PAGE_CSP] if is_page else [])
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "other"
            status = status_holder["status"]
            self.metrics.requests.labels(scope["method"], template, str(status)).inc()
            self.metrics.latency.labels(template).observe(time.perf_counter() - start)
            if status >= 400:
                self.metrics.errors.labels(template, str(status)).inc()


#: Characters an API key may hold: printable ASCII but white space, '"', ',', ';' and '\\' (what a cookie can carry).
API_KEY_CHARACTERS = frozenset(chr(c) for c in range(0x21, 0x7F)) - set('",;\\')


def check_api_key(key: str) -> str:
    """``key`` when it can serve as the API key; ``ValueError`` naming the problem for an empty key, white space
    only, or a character outside ``API_KEY_CHARACTERS`` (a non-ASCII key cannot travel in a header or a cookie)."""
    if not isinstance(key, str) or not key.strip():
        raise ValueError(f"the API key must not be empty or white space; got {key!r}")
    bad = sorted({c for c in key if c not in API_KEY_CHARACTERS})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:5])
        raise ValueError(f"the API key holds {shown}: use printable ASCII characters only, without white space, "
                         "quotes, commas, semicolons or backslashes")
    return key


class ApiKeyMiddleware:
    """Requires the API key on every path except ``OPEN_PATHS``.

    The key is accepted in the ``X-API-Key`` header, as ``Authorization: Bearer KEY``, or in the
    ``probclip_api_key`` cookie. ``GET /?api_key=KEY`` (the link a user opens in a browser) sets that cookie
    (HttpOnly, SameSite=Strict) and redirects to the page without the key in the address.
    """

    def __init__(self, app, api_key: str):
        self.app, self.api_key = app, check_api_key(api_key).encode()

    def _matches(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode(), self.api_key)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        from_query = next((v for k, v in query if k == API_KEY_QUERY), None)
        if scope["path"] == "/" and scope["method"] == "GET" and from_query is not None:
            if not self._matches(from_query):
                return await _send_json(send, 401, "wrong API key in ?api_key=")
            rest = urlencode([(k, v) for k, v in query if k != API_KEY_QUERY])
            cookie = f"{API_KEY_COOKIE}={from_query}; Path=/; HttpOnly; SameSite=Strict"
            await send({"type": "http.response.start", "status": 303, "headers": [
                (b"location", ("/" + ("?" + rest if rest else "")).encode()),
                (b"set-cookie", cookie.encode("latin-1")), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        auth = headers.get("authorization", "")
        bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        cookies = SimpleCookie()
        try:
            cookies.load(headers.get("cookie", ""))
        except Exception:  # noqa: BLE001 - a malformed Cookie header simply carries no key
            cookies = SimpleCookie()
        from_cookie = cookies[API_KEY_COOKIE].value if API_KEY_COOKIE in cookies else None
        if any(self._matches(c) for c in (headers.get(API_KEY_HEADER), bearer, from_cookie)):
            return await self.app(scope, receive, send)
        await _send_json(send, 401, "this service requires an API key: send it as the X-API-Key header, as "
                                    "'Authorization: Bearer KEY', or open /?api_key=KEY in a browser",
                         [(b"www-authenticate", b'Bearer realm="probclip"')])


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_bytes``: from ``Content-Length`` at once, and while a body streams in."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for key, value in scope.get("headers", []):
            if key.lower() == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return await _send_json(send, 400, f"Content-Length {value.decode('latin-1')!r} is not a number")
                if length > self.max_bytes:
                    return await _send_json(send, 413, str(RequestTooLargeError(self.max_bytes)))
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise RequestTooLargeError(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


class InternalErrorMiddleware:
    """Turns an exception that no handler answered into a one-line JSON 500 and logs its traceback.

    Starlette's own last-resort handler re-raises after answering, and the server then closes the connection; this
    one answers and returns, so a keep-alive connection stays open and the client sees neither a traceback nor an
    object's repr.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_wrapper(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as err:  # noqa: BLE001 - answered and logged, never swallowed silently
            logging.getLogger("probclip.serve").exception("internal error answering %s %s", scope.get("method"),
                                                          scope.get("path"))
            if started:
                raise
            await _send_json(send, 500, f"internal error ({type(err).__name__}) answering this request; the "
                                        "service's log has the details")
