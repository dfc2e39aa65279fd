"""Which names the service answers to: a ``Host`` / ``Origin`` allow-list (DNS rebinding, cross-site calls).

A web page on another site can make a browser call a service on 127.0.0.1 (a cross-site request) or, by
re-pointing its own DNS name at 127.0.0.1, make the browser treat the service as part of that site (DNS
rebinding). Both are refused here: the ``Host`` header must name one of the allowed hosts (the localhost names by
default, more with ``--allowed-host``) and an ``Origin`` header, when a browser sends one, must be such a host too
or one of the origins allowed with ``--cors-origin``.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = ["DEFAULT_ALLOWED_HOSTS", "HostGuardMiddleware", "host_name", "normalise_host", "normalise_origin"]

#: The names a service answers to unless told more (``--allowed-host``); ports are not part of the check.
DEFAULT_ALLOWED_HOSTS = ("localhost", "127.0.0.1", "::1")
#: Paths answered whatever the Host (load-balancer probes often use an address the allow-list does not name).
UNGUARDED_PATHS = ("/health",)


def host_name(value: str) -> str:
    """The host part of a ``Host`` header value (``name``, ``name:port``, ``[v6]:port``), lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value  # a bare name, or a bare IPv6 address (not a valid Host, but compared as given)


def normalise_host(value: str) -> str:
    """An ``--allowed-host`` value as compared: lower case, no port, no brackets; ``*`` allows every host.

    Raises ``ValueError`` for an empty value or one holding a scheme, a path or white space.
    """
    text = value.strip()
    if text == "*":
        return text
    if not text or any(c in text for c in "/ \t@?#") or not text.isascii():
        raise ValueError(f"--allowed-host {value!r} is not a host name or address; give e.g. search.example.org, "
                         "192.168.1.20 or '*'")
    name = host_name(text)
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name


def normalise_origin(value: str) -> str:
    """A ``--cors-origin`` value as browsers send it: ``scheme://host[:port]``, no path; ``ValueError`` otherwise."""
    text = value.strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query or parts.fragment \
            or "@" in parts.netloc or not text.isascii():
        raise ValueError(f"--cors-origin {value!r} is not an origin; give scheme://host[:port], e.g. "
                         "http://localhost:1235")
    return f"{parts.scheme}://{parts.netloc.lower()}"


async def _refuse(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class HostGuardMiddleware:
    """Answers 400 to a ``Host`` outside ``allowed_hosts`` and 403 to an ``Origin`` that is neither an allowed
    host nor one of ``cors_origins``; requests without those headers (HTTP/1.0, curl without Origin) pass."""

    def __init__(self, app, allowed_hosts: Iterable[str] = DEFAULT_ALLOWED_HOSTS, cors_origins: Iterable[str] = ()):
        self.app = app
        self.allowed = {normalise_host(h) for h in allowed_hosts}
        self.any_host = "*" in self.allowed
        self.cors_origins = {normalise_origin(o) for o in cors_origins}

    def _host_allowed(self, name: str) -> bool:
        if self.any_host:
            return True
        try:
            name = str(ipaddress.ip_address(name))
        except ValueError:
            pass
        return name in self.allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in UNGUARDED_PATHS:
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        host = headers.get(b"host")
        if host is not None:
            name = host_name(host.decode("latin-1"))
            if not self._host_allowed(name):
                shown = ", ".join(sorted(self.allowed))
                return await _refuse(send, 400, f"Host {name[:100]!r} is not served here (allowed: {shown}); start "
                                                "the service with --allowed-host NAME to answer to that name")
        origin = headers.get(b"origin")
        if origin is not None:
            text = origin.decode("latin-1").strip().rstrip("/").lower()
            parts = urlsplit(text)
            same_site = parts.scheme in ("http", "https") and parts.hostname is not None \
                and self._host_allowed(parts.hostname)
            if not (same_site or text in self.cors_origins):
                return await _refuse(send, 403, f"requests from origin {text[:100]!r} are refused; allow a web "
                                                "front end's origin with --cors-origin ORIGIN")
        return await self.app(scope, receive, send)
