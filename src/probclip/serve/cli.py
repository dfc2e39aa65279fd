"""``probclip serve DIR [DIR ...]``: the HTTP search service and web page over embedded, indexed collections.

A DIR is a collection directory (written by ``probclip embed`` and indexed by ``probclip index``) or the folder
``probclip quickstart --out DIR`` wrote: then the synthetic world's test split is embedded and indexed with the
quickstart model on first start (``prepare_quickstart_collection``) and both modalities are served.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import faiss
import torch
import uvicorn

from ..cli import run_command
from ..errors import InputError, UsageError
from ..search import SearchIndex
from ..search.layout import MANIFEST_NAME, MODALITIES
from ..search.manifest import read_manifest
from ..search.model_loading import load_model
from ..search.quickstart import prepare_quickstart_collection
from .app import create_app
from .hosts import DEFAULT_ALLOWED_HOSTS, normalise_host, normalise_origin
from .limits import ServiceLimits
from .middleware import check_api_key

__all__ = ["main", "build_parser", "load_indexes", "is_quickstart_dir", "API_KEY_ENV"]

#: Environment variable read for the API key when ``--api-key`` is not given.
API_KEY_ENV = "PROBCLIP_API_KEY"
#: Bounds of ``--max-request-mb`` (MiB): below 1 KiB no search fits; above 1 GiB is no longer a bound.
MIN_REQUEST_MB, MAX_REQUEST_MB = 1 / 1024, 1024.0


def is_quickstart_dir(path: Path) -> bool:
    """True for a folder written by ``probclip quickstart`` (``model/config.json``, no collection manifest)."""
    return (path / "model" / "config.json").is_file() and not (path / MANIFEST_NAME).is_file()


def _collection_dir(path: Path, progress: bool) -> Path:
    if not path.is_dir():
        raise InputError(f"{str(path)!r} is not a directory; expected a collection written by `probclip embed` "
                         "(with manifest.json) or a folder written by `probclip quickstart`")
    if is_quickstart_dir(path):
        print(f"probclip serve: {path} is a quickstart folder: preparing its collection (embedded and indexed once)",
              file=sys.stderr, flush=True)
        return Path(prepare_quickstart_collection(path, progress=progress))
    if not (path / MANIFEST_NAME).is_file():
        raise InputError(f"{str(path)!r} has no {MANIFEST_NAME}; expected a collection written by `probclip embed` "
                         "and indexed by `probclip index`, or a folder written by `probclip quickstart`")
    return path


def _modalities_of(collection: Path) -> list[str]:
    return read_manifest(collection).present_modalities()


def load_indexes(dirs: Sequence[str | os.PathLike], *, model: str | None = None, modality: str = "both",
                 progress: bool = True) -> list[SearchIndex]:
    """Load the ``SearchIndex`` of each modality present in each directory (quickstart folders prepared first).

    One model is loaded per distinct model fingerprint and shared by the indexes that use it. Every shard file is
    checked against its recorded fingerprint here, so that a damaged collection is refused before it is served.
    """
    if modality not in ("both",) + MODALITIES:
        raise UsageError(f"--modality must be one of both, image, text; got {modality!r}")
    shared = load_model(model)[0] if model is not None else None
    models_by_fingerprint: dict[str, object] = {}
    indexes: list[SearchIndex] = []
    for raw in dirs:
        collection = _collection_dir(Path(raw), progress)
        wanted = [m for m in _modalities_of(collection) if modality in ("both", m)]
        if not wanted:
            raise UsageError(f"collection {str(collection)!r} holds no {modality} rows; served modalities come from "
                             f"its manifest")
        for m in wanted:
            index = SearchIndex.load(collection, modality=m, model=shared)
            index.stored.check_files()  # every shard file against its fingerprint, before anything is served
            if shared is None:
                cached = models_by_fingerprint.get(index.model_fingerprint)
                if cached is None:
                    try:
                        models_by_fingerprint[index.model_fingerprint] = index.model
                    except UsageError as err:
                        raise UsageError(f"{err} (with probclip serve: --model DIR)") from err
                else:
                    index = SearchIndex.load(collection, modality=m, model=cached)
            indexes.append(index)
    return indexes


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _bind(host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({err.strerror or err}); choose another --port or --host") \
            from err
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="probclip serve",
        description="Serve embedded, indexed collections over HTTP: a JSON search API (OpenAPI at /docs), "
                    "Prometheus /metrics and a web page at /.",
    )
    parser.add_argument("dirs", nargs="+", metavar="DIR",
                        help="a collection directory (probclip embed + probclip index) or a quickstart folder")
    parser.add_argument("--model", default=None,
                        help="model for text and image queries (directory or hf-hub: id); default: the one each "
                             "collection's manifest names")
    parser.add_argument("--modality", default="both", choices=("both",) + MODALITIES,
                        help="which modalities of each collection to serve (default both)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--api-key", default=None,
                        help=f"require this key on every endpoint but /health (default: ${API_KEY_ENV} if set)")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="also answer requests whose Host header names NAME (repeat for more; '*': any); "
                             f"default: {', '.join(DEFAULT_ALLOWED_HOSTS)} and the --host address")
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="let web pages from ORIGIN (scheme://host[:port], e.g. clip-retrieval's front end) "
                             "call the API from a browser; off by default; the API key still applies")
    parser.add_argument("--metadata-fields", default=None, metavar="F1,F2",
                        help="the metadata fields served, comma-separated (default: all; source is always "
                             "relative to the collection's folders, or hidden)")
    parser.add_argument("--max-request-mb", type=float, default=16.0, help="largest request body, MiB (default 16)")
    parser.add_argument("--max-image-megapixels", type=float, default=40.0,
                        help="largest decoded query image, megapixels, checked before decoding (default 40)")
    parser.add_argument("--max-k", type=int, default=1000, help="largest k a search may ask for (default 1000)")
    parser.add_argument("--max-concurrent-decodes", type=int, default=1, metavar="N",
                        help="image searches holding a decoded upload at once; the others wait (default 1; each "
                             "costs up to a few hundred MB for a 36-megapixel upload)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads of the model and the index (torch and FAISS); default 0: their own default. "
                             "1 is fastest on a machine whose cores are busy with other work")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                        help="uvicorn log level (default info)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars while preparing a collection")
    return parser


def limits_from_args(args: argparse.Namespace) -> ServiceLimits:
    """The ``ServiceLimits`` the options ask for; ``UsageError`` for values out of range."""
    if not (math.isfinite(args.max_request_mb) and MIN_REQUEST_MB <= args.max_request_mb <= MAX_REQUEST_MB):
        raise UsageError(f"--max-request-mb must be a number from {MIN_REQUEST_MB} to {MAX_REQUEST_MB}; got "
                         f"{args.max_request_mb}")
    if not (math.isfinite(args.max_image_megapixels) and 1e-6 <= args.max_image_megapixels <= 1e6):
        raise UsageError(f"--max-image-megapixels must be a number from 0.000001 (1 pixel) to 1000000; got "
                         f"{args.max_image_megapixels}")
    if args.max_k < 1:
        raise UsageError(f"--max-k must be >= 1; got {args.max_k}")
    if args.max_concurrent_decodes < 1:
        raise UsageError(f"--max-concurrent-decodes must be >= 1; got {args.max_concurrent_decodes}")
    request_bytes = int(args.max_request_mb * 1024 * 1024)
    return ServiceLimits(max_request_bytes=request_bytes, max_image_bytes=min(request_bytes, 10 * 1024 * 1024),
                         max_image_pixels=max(1, round(args.max_image_megapixels * 1_000_000)), max_k=args.max_k,
                         max_concurrent_decodes=args.max_concurrent_decodes)


def api_key_from_args(args: argparse.Namespace) -> str | None:
    """The API key (``--api-key``, else ``$PROBCLIP_API_KEY``), or None; ``UsageError`` for an empty, white-space
    or non-ASCII key, which would otherwise turn authentication off or fail at the first request."""
    if args.api_key is not None:
        key, origin = args.api_key, "--api-key"
    elif API_KEY_ENV in os.environ:
        key, origin = os.environ[API_KEY_ENV], f"${API_KEY_ENV}"
    else:
        return None
    try:
        return check_api_key(key)
    except ValueError as err:
        raise UsageError(f"{origin}: {err}; unset it to serve without a key") from err


def access_from_args(args: argparse.Namespace) -> dict:
    """``allowed_hosts``, ``cors_origins`` and ``metadata_fields`` for ``create_app``; ``UsageError`` for bad values."""
    try:
        hosts = [normalise_host(h) for h in args.allowed_host]
        origins = [normalise_origin(o) for o in args.cors_origin]
    except ValueError as err:
        raise UsageError(str(err)) from err
    if args.host not in ("0.0.0.0", "::", ""):
        hosts.append(normalise_host(args.host) if args.host.isascii() else args.host)
    fields = None
    if args.metadata_fields is not None:
        fields = [f.strip() for f in args.metadata_fields.split(",") if f.strip()]
        if not fields:
            raise UsageError(f"--metadata-fields must name at least one field, e.g. caption,source; got "
                             f"{args.metadata_fields!r}")
    return {"allowed_hosts": [*DEFAULT_ALLOWED_HOSTS, *hosts], "cors_origins": origins, "metadata_fields": fields}


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be from 0 to 65535; got {args.port}")
    api_key = api_key_from_args(args)
    access = access_from_args(args)
    limits = limits_from_args(args)
    if args.threads < 0:
        raise UsageError(f"--threads must be >= 0 (0: the libraries' default); got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    sock = _bind(args.host, args.port)  # before the slow part, so a busy port fails at once
    try:
        indexes = load_indexes(args.dirs, model=args.model, modality=args.modality, progress=not args.no_progress)
        app = create_app(indexes, api_key=api_key, limits=limits, **access)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        for index in indexes:
            ranking = "exact" if index.exact else f"approximate ({index.kind})"
            print(f"probclip serve: {index.name}: {index.rows} {index.modality} rows, {ranking}", flush=True)
        if not _is_loopback(host) and not api_key:
            print(f"probclip serve: warning: listening on {host} without an API key: anyone who can reach this "
                  f"address can search and read thumbnails (see --api-key)", file=sys.stderr, flush=True)
        if not _is_loopback(host) and "*" not in access["allowed_hosts"]:
            print(f"probclip serve: answering requests addressed to {', '.join(access['allowed_hosts'])} only; add "
                  "the names or addresses clients use with --allowed-host", file=sys.stderr, flush=True)
        print(f"probclip serve: listening on http://{shown}:{port}/ (API docs at /docs)", flush=True)
        config = uvicorn.Config(app, log_level=args.log_level, proxy_headers=False, server_header=False)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0


def _serve_command(argv: list[str]) -> int:
    return run(build_parser().parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``probclip serve``; returns the exit status (a user error: one line on stderr)."""
    return run_command("serve", _serve_command, sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
