"""The HTTP search service: ``create_app`` wires a FastAPI app over one or more ``SearchIndex`` objects.

``create_app(indexes, api_key=None, limits=ServiceLimits())`` returns the ASGI app: its state (a
``service.SearchService``), its middleware, the error table (``errors.ERROR_TABLE``) and two routers: the service's
own (``routes.py``: ``GET /health``, ``GET /indices``, ``GET /search/options``, ``POST /search`` (JSON or
multipart), ``GET /items/{index}/{id}``, ``GET /items/{index}/{id}/image``, ``GET /metrics``, the web page at
``/``) and clip-retrieval's (``clip_compat.py``). Static files are served at ``/static/*``. Search queries go
through a :class:`SearchBatcher` (one worker thread, grouped calls); metadata, embeddings and images are read in
the thread pool, so the event loop never runs model or index work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles

from ..search import SearchIndex
from .batching import SearchBatcher
from .clip_compat import clip_retrieval_router
from .errors import ServiceError, add_error_handlers
from .hosts import DEFAULT_ALLOWED_HOSTS, HostGuardMiddleware, normalise_origin
from .limits import ServiceLimits
from .metrics import ServiceMetrics
from .middleware import ApiKeyMiddleware, BodyLimitMiddleware, InternalErrorMiddleware, MetricsMiddleware
from .routes import STATIC_DIR, router
from .schemas import SearchRequest
from .service import SearchService, named_indexes

__all__ = ["create_app", "ServiceError"]

TITLE = "probclip search service"
DESCRIPTION = ("Search collections embedded with a probabilistic vision-language model; every result carries its "
               "uncertainty and says whether its ranking is exact.")


def create_app(indexes: Mapping[str, SearchIndex] | Iterable[SearchIndex], api_key: str | None = None,
               limits: ServiceLimits | None = None, *, max_batch: int = 64, max_wait_s: float = 0.0,
               allowed_hosts: Iterable[str] = DEFAULT_ALLOWED_HOSTS, cors_origins: Iterable[str] = (),
               metadata_fields: Iterable[str] | None = None) -> FastAPI:
    """The ASGI app serving ``indexes`` (``SearchIndex`` objects; their ``name`` is their address).

    Args:
        indexes: the indexes to serve, in the order ``GET /indices`` lists them (the first is the default).
        api_key: when given, every endpoint except ``/health`` requires it (header, bearer token or cookie).
        limits: request bounds; ``ServiceLimits()`` when None.
        max_batch, max_wait_s: how the search worker groups queries (see ``SearchBatcher``).
        allowed_hosts: the names the ``Host`` header (and a browser's ``Origin``) may give; ``"*"``: any.
        cors_origins: web origins (``scheme://host[:port]``) allowed to call the API from a browser (CORS).
        metadata_fields: the metadata fields served (``None``: all); ``source`` is never an absolute path.
    """
    limits = limits or ServiceLimits()
    metrics = ServiceMetrics()
    batcher = SearchBatcher(max_batch=max_batch, max_wait_s=max_wait_s, on_batch=metrics.observe_batch)
    service = SearchService(named_indexes(indexes), limits, batcher, metrics, metadata_fields)
    app = FastAPI(title=TITLE, version="1", description=DESCRIPTION, lifespan=_lifespan)
    app.state.service = service
    add_error_handlers(app)
    app.include_router(router)
    app.include_router(clip_retrieval_router(service))
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    _add_middleware(app, metrics, limits, api_key, allowed_hosts, cors_origins)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the search worker and sample the uncertainty scales before the first request; stop the worker last."""
    service: SearchService = app.state.service
    service.batcher.start()
    for scale in service.scales.values():
        await scale.ready()
    yield
    service.batcher.stop()


def _openapi(app: FastAPI) -> dict:
    """The OpenAPI schema, with ``SearchRequest`` (``POST /search`` reads its body itself: JSON or multipart)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        model_schema = SearchRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(model_schema.pop("$defs", {}))
        components[SearchRequest.__name__] = model_schema
        app.openapi_schema = schema
    return app.openapi_schema


def _add_middleware(app: FastAPI, metrics: ServiceMetrics, limits: ServiceLimits, api_key: str | None,
                    allowed_hosts: Iterable[str], cors_origins: Iterable[str]) -> None:
    """Outermost last: metrics see every answer, including 400, 401, 403 and 413 from the guards inside them; CORS
    headers go on the API key's 401 too, so a front end on an allowed origin can read why it was refused."""
    app.add_middleware(InternalErrorMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_request_bytes)
    if api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)
    cors_origins = tuple(normalise_origin(o) for o in cors_origins)
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "HEAD", "POST"],
                           allow_headers=["content-type", "x-api-key", "authorization"],
                           expose_headers=["x-probclip-ignored", "x-probclip-adjusted"])
    app.add_middleware(HostGuardMiddleware, allowed_hosts=allowed_hosts, cors_origins=cors_origins)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
