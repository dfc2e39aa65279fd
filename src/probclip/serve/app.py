"""The HTTP search service: a FastAPI app over one or more ``SearchIndex`` objects.

``create_app(indexes, api_key=None, limits=ServiceLimits())`` returns the ASGI app. Endpoints:
``GET /health``, ``GET /indices``, ``POST /search`` (JSON or multipart), ``GET /items/{index}/{id}``,
``GET /items/{index}/{id}/image``, ``GET /metrics`` and the web page at ``/`` (``/static/*``).
Search queries go through a :class:`SearchBatcher` (one worker thread, grouped calls); metadata, embeddings
and images are read in the thread pool, so the event loop never runs model or index work.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping
from contextlib import asynccontextmanager, nullcontext
from dataclasses import replace
from importlib import resources
from typing import Any, Literal
from urllib.parse import quote

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..embedding import ProbEmbedding
from ..errors import InputError, UsageError
from .batching import SearchBatcher, SearchParams
from .clip_compat import clip_retrieval_router
from .decode_slots import DecodeSlots, decode_upload
from .dedup import candidate_rows, fetch_k, hide_duplicates
from .explain import empty_reason
from .export import results_csv
from .hosts import DEFAULT_ALLOWED_HOSTS, HostGuardMiddleware, normalise_origin
from .limits import ImageTooLargeError, ServiceLimits
from .metadata import MetadataPolicy, scrub_detail
from .metrics import PROMETHEUS_CONTENT_TYPE, ServiceMetrics
from .middleware import (
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    InternalErrorMiddleware,
    MetricsMiddleware,
    RequestTooLargeError,
)
from .schemas import ErrorBody, IndexInfo, ItemInfo, SearchRequest, SearchResponse
from .uncertainty_scale import UncertaintyScale

__all__ = ["create_app", "ServiceError"]

log = logging.getLogger("probclip.serve")

STATIC_DIR = resources.files("probclip.serve") / "static"
#: Fields a multipart search form may carry besides the ``image`` file.
FORM_FIELDS = ("index", "text", "k", "score", "max_uncertainty", "uncertainty_quantile", "deduplicate")
#: Largest |logvar| accepted in an embedding query (exp(30) ~ 1e13: far beyond any trained model's variances).
MAX_ABS_LOGVAR = 30.0
ERROR_RESPONSES = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 413, 415, 422, 500)}


class ServiceError(Exception):
    """An answer other than 200 with a one-line message (unknown index, out-of-range id, ...)."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _json_safe(value: Any) -> Any:
    """Metadata values as JSON: numpy scalars and arrays to Python, non-finite floats to None, bytes to text."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def _validation_message(err: ValidationError | RequestValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "invalid search request: " + "; ".join(parts)


class _Service:
    """The state behind the routes: the indexes by name, the batcher, limits, metrics, uncertainty scales."""

    def __init__(self, indexes: Mapping[str, Any], limits: ServiceLimits, batcher: SearchBatcher,
                 metrics: ServiceMetrics, metadata_fields: Iterable[str] | None = None):
        self.indexes, self.limits, self.batcher, self.metrics = indexes, limits, batcher, metrics
        self.scales = {name: UncertaintyScale(index) for name, index in indexes.items()}
        self.policies = {name: MetadataPolicy(index, metadata_fields) for name, index in indexes.items()}
        self.decode_slots = DecodeSlots(limits.max_concurrent_decodes)

    def index(self, name: str | None) -> Any:
        if name is not None and name not in self.indexes:
            raise ServiceError(404, f"unknown index {name!r}; served indexes: {', '.join(self.indexes)}")
        index = next(iter(self.indexes.values())) if name is None else self.indexes[name]
        changed = getattr(index, "changed", None)  # a collection rebuilt in place is never searched half-way
        reason = changed() if changed is not None else None
        if reason:
            raise ServiceError(503, f"index {index.name!r} changed on disk since the service loaded it: {reason}; "
                                    "restart the service to serve the new collection")
        return index

    def row_id(self, index: Any, raw: str | int) -> int:
        text = str(raw)
        if not (text.isascii() and text.isdigit()) or int(text) >= index.rows:
            raise ServiceError(404, f"row id {text!r} not in index {index.name!r}: expected an integer from 0 to "
                                    f"{index.rows - 1}")
        return int(text)

    def image_url(self, index: Any, row_id: int) -> str | None:
        if index.modality != "image":
            return None
        return f"/items/{quote(index.name, safe='/')}/{row_id}/image"

    # ------------------------------------------------------------------ queries
    async def parse_search(self, request: Request) -> tuple[SearchRequest, bytes | None]:
        """The search request and, for a multipart upload or base64 JSON, the image bytes."""
        content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if content_type == "multipart/form-data":
            return await self._parse_multipart(request)
        if content_type not in ("application/json", ""):
            raise ServiceError(415, f"unsupported content type {content_type!r}; send application/json or "
                                    f"multipart/form-data")
        body = await request.body()
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ServiceError(400, f"malformed JSON body: {_first_line(err)}") from err
        except RecursionError as err:
            raise ServiceError(400, "malformed JSON body: nested too deeply") from err
        if not isinstance(payload, dict):
            raise ServiceError(400, f"the JSON body must be an object; got {type(payload).__name__}")
        try:
            req = SearchRequest.model_validate(payload)
        except ValidationError as err:
            raise ServiceError(422, _validation_message(err)) from err
        image = None
        if req.image is not None:
            if len(req.image) > self.limits.max_image_bytes * 4 // 3 + 4:
                raise ImageTooLargeError(f"base64 image of {len(req.image)} characters refused: the limit is "
                                         f"{self.limits.max_image_bytes} bytes of image")
            try:
                image = base64.b64decode(req.image, validate=True)
            except (binascii.Error, ValueError) as err:
                raise ServiceError(400, f"'image' is not valid base64: {_first_line(err)}") from err
        return req, image

    async def _parse_multipart(self, request: Request) -> tuple[SearchRequest, bytes | None]:
        form = await request.form(max_files=1, max_fields=len(FORM_FIELDS) + 1,
                                  max_part_size=self.limits.max_image_bytes)
        try:
            unknown = [key for key in form.keys() if key not in FORM_FIELDS + ("image",)]
            if unknown:
                raise ServiceError(422, f"unknown form field(s) {', '.join(map(repr, unknown))}; accepted: "
                                        f"image, {', '.join(FORM_FIELDS)}")
            fields = {k: v for k, v in form.items() if k in FORM_FIELDS and isinstance(v, str) and v != ""}
            upload = form.get("image")
            image = None
            if isinstance(upload, UploadFile):
                image = await upload.read(self.limits.max_image_bytes + 1)
                fields["image"] = "multipart"  # a placeholder: the bytes travel apart
            elif isinstance(upload, str) and upload:
                raise ServiceError(422, "form field 'image' must be a file upload")
        finally:
            await form.close()
        try:
            req = SearchRequest.model_validate(fields)
        except ValidationError as err:
            raise ServiceError(422, _validation_message(err)) from err
        return req, image

    async def query_of(self, req: SearchRequest, index: Any, image: bytes | None) -> tuple[str, Any, dict]:
        """``(kind, query, description)`` for the batcher: a text, a decoded image or a ``ProbEmbedding`` [1, D]."""
        if req.text is not None:
            text = req.text.strip()
            if not text or len(text) > self.limits.max_text_chars:
                raise ServiceError(422, f"text must have 1 to {self.limits.max_text_chars} characters; got "
                                        f"{len(text)}")
            return "text", text, {"kind": "text", "text": text}
        if image is not None:
            input_size = getattr(getattr(getattr(index.model, "config", None), "vision", None), "image_size", None)
            input_size = max(input_size) if isinstance(input_size, (tuple, list)) else input_size
            decoded = await decode_upload(image, self.limits, input_size)  # the caller holds a decode slot
            return "image", decoded, {"kind": "image", "width": decoded.width, "height": decoded.height}
        if req.embedding is not None:
            mean, logvar = req.embedding.mean, req.embedding.logvar
            if len(mean) != index.dim or len(logvar) != index.dim:
                raise ServiceError(422, f"embedding mean and logvar must both have {index.dim} values for index "
                                        f"{index.name!r}; got {len(mean)} and {len(logvar)}")
            m = torch.tensor(mean, dtype=torch.float32)
            lv = torch.tensor(logvar, dtype=torch.float32)
            if not (torch.isfinite(m).all() and torch.isfinite(lv).all()):
                raise ServiceError(422, "embedding values must be finite numbers (no NaN or infinity)")
            if lv.abs().max() > MAX_ABS_LOGVAR:
                raise ServiceError(422, f"embedding logvar values must lie in [-{MAX_ABS_LOGVAR}, {MAX_ABS_LOGVAR}] "
                                        f"(log sigma^2); got {float(lv.abs().max()):.4g} in absolute value")
            norm = m.norm()
            if norm == 0:
                raise ServiceError(422, "embedding mean must not be all zeros")
            emb = ProbEmbedding((m / norm)[None], lv[None])
            return "embedding", emb, {"kind": "embedding", "uncertainty": float(emb.uncertainty[0])}
        source = self.index(req.item.index)
        row = self.row_id(source, req.item.row_id)
        emb = await run_in_threadpool(source.embedding, [row])
        emb = ProbEmbedding(emb.mean.float().reshape(1, -1), emb.logvar.float().reshape(1, -1))
        if emb.dim != index.dim:
            raise ServiceError(422, f"item of {source.name!r} has {emb.dim} dimensions, index {index.name!r} has "
                                    f"{index.dim}")
        return "embedding", emb, {"kind": "item", "index": source.name, "row_id": row,
                                  "uncertainty": float(emb.uncertainty[0])}

    async def run(self, req: SearchRequest, index: Any, image: bytes | None) -> tuple[Any, dict]:
        """Search ``index`` for one request: ``(SearchResults, description of the query)``.

        An image query holds a decode slot from decoding until the worker has encoded it; with ``deduplicate``,
        more results are fetched and the duplicates among them hidden (``dedup.hide_duplicates``).
        """
        k = fetch_k(req.k, index.rows) if req.deduplicate else req.k
        params = SearchParams(k=k, score=req.score, max_uncertainty=req.max_uncertainty,
                              uncertainty_quantile=req.uncertainty_quantile)
        self.batcher.start()  # idempotent: also serves apps driven without their lifespan (ASGI test transports)
        async with self.decode_slots.hold() if image is not None else nullcontext():
            kind, query, described = await self.query_of(req, index, image)
            answer = await self.batcher.search(index, kind, query, params)
            del query
        results = answer.results
        if req.deduplicate:
            shown, hidden = await _deduplicated(index, results, req.k)
            while len(shown) < req.k and len(results) == params.k < index.rows:  # copies hid too many: fetch more
                params = replace(params, k=fetch_k(req.k, index.rows, params.k))
                results = (await self.batcher.search(index, "embedding", answer.query, params)).results
                shown, hidden = await _deduplicated(index, results, req.k)
            results = shown
            described["duplicates_hidden"] = hidden
        described.setdefault("uncertainty", answer.query_uncertainty)
        self.metrics.search_queries.inc(index.name, kind)
        return results, described

    async def hits(self, index: Any, results: Any) -> list[dict]:
        """The results as ``SearchHit``-shaped dicts (built directly: validating them again would cost more than
        the search of a small index)."""
        scale = self.scales[index.name]
        await scale.ready()
        public = self.policies[index.name].public
        return [{"row_id": row_id, "score": _finite(score), "uncertainty": _finite(u),
                 "uncertainty_percentile": scale.percentile(u), "metadata": _json_safe(public(meta)),
                 "image_url": self.image_url(index, row_id)}
                for row_id, score, u, meta in zip(results.ids.tolist(), results.scores.tolist(),
                                                  results.uncertainty.tolist(), results.metadata, strict=True)]

    async def empty_reason(self, index: Any, req: SearchRequest, described: dict) -> str | None:
        """Why a search found nothing (see ``probclip.serve.explain``)."""
        scale = self.scales[index.name]
        await scale.ready()
        query_u = described.get("uncertainty")
        percentile = None if query_u is None else scale.percentile(query_u)
        filtered = req.max_uncertainty is not None or req.uncertainty_quantile is not None
        return empty_reason(req.score, described.get("kind", ""), query_u, index.modality, percentile,
                            scale.quantiles().get("0.5"), filtered)


async def _deduplicated(index: Any, results: Any, k: int) -> tuple[Any, int]:
    """``hide_duplicates`` in the thread pool when stored rows must be read; on the event loop when the results'
    ``u`` already rules every copy out (a few microseconds: cheaper than the hand-over to a thread)."""
    if candidate_rows(results.uncertainty).size:
        return await run_in_threadpool(hide_duplicates, index, results, k)
    return hide_duplicates(index, results, k)


def _thumbnail_bytes(index: Any, row_id: int, size: int, policy: MetadataPolicy) -> bytes | None:
    """A JPEG thumbnail (longest side ``size`` px) of an image row, or None for a row without an image.

    Raises ``ServiceError`` 404 when the row's metadata names a file outside the collection and its sources.
    """
    source = index.metadata([row_id])[0].get("source")
    if not policy.readable_image(source):
        raise ServiceError(404, f"row {row_id} of index {index.name!r} names an image outside the collection and "
                                "the folders it was embedded from; it is not served")
    image = index.open_image(row_id)
    if image is None:
        return None
    image = image.convert("RGB")
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _named(indexes: Mapping[str, Any] | Iterable[Any]) -> dict[str, Any]:
    items = list(indexes.values()) if isinstance(indexes, Mapping) else list(indexes)
    if not items:
        raise UsageError("create_app needs at least one SearchIndex; got none")
    named: dict[str, Any] = {}
    for index in items:
        if index.name in named:
            raise UsageError(f"two indexes are named {index.name!r}; index names must be unique")
        named[index.name] = index
    return named


def create_app(indexes: Mapping[str, Any] | Iterable[Any], api_key: str | None = None,
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
    named = _named(indexes)
    metrics = ServiceMetrics()

    def on_batch(index_name: str, size: int, seconds: float) -> None:
        metrics.batch_size.observe(size, index_name)
        metrics.batch_seconds.observe(seconds, index_name)

    batcher = SearchBatcher(max_batch=max_batch, max_wait_s=max_wait_s, on_batch=on_batch)
    service = _Service(named, limits, batcher, metrics, metadata_fields)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        for scale in service.scales.values():
            await scale.ready()
        yield
        batcher.stop()

    app = FastAPI(
        title="probclip search service",
        version="1",
        description="Search collections embedded with a probabilistic vision-language model; every result "
                    "carries its uncertainty and says whether its ranking is exact.",
        lifespan=lifespan,
    )
    app.state.service = service

    # ------------------------------------------------------------------ errors: one line, a 4xx status
    def error(status: int, detail: str) -> JSONResponse:
        return JSONResponse({"detail": scrub_detail(detail)}, status_code=status)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, err: ServiceError):
        return error(err.status, err.detail)

    @app.exception_handler(ImageTooLargeError)
    async def _too_large_image(request: Request, err: ImageTooLargeError):
        return error(413, _first_line(err))

    @app.exception_handler(RequestTooLargeError)
    async def _too_large_body(request: Request, err: RequestTooLargeError):
        return error(413, _first_line(err))

    @app.exception_handler(UsageError)
    async def _usage_error(request: Request, err: UsageError):
        return error(400, _first_line(err))

    @app.exception_handler(InputError)
    async def _input_error(request: Request, err: InputError):
        return error(400, _first_line(err))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError):
        return error(422, _validation_message(err))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        return error(err.status_code, str(err.detail))

    # ------------------------------------------------------------------ routes
    @app.head("/health", include_in_schema=False)  # probes that use HEAD get 200 too
    @app.get("/health", summary="Liveness (never needs the API key)")
    async def health() -> dict:
        return {"status": "ok", "indices": len(named), "search_worker": "running" if batcher.running else "idle"}

    @app.get("/indices", response_model=list[IndexInfo], summary="The served indexes", responses=ERROR_RESPONSES)
    async def indices() -> list[IndexInfo]:
        out = []
        for name, index in named.items():
            scale = service.scales[name]
            await scale.ready()
            out.append(IndexInfo(name=name, modality=index.modality, rows=index.rows, dim=index.dim,
                                 model=index.model_name, model_fingerprint=index.model_fingerprint,
                                 kind=index.kind, exact=bool(index.exact), recall_at_10=index.recall_at_10,
                                 uncertainty_quantiles=scale.quantiles()))
        return out

    search_body = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/SearchRequest"}},
                "multipart/form-data": {"schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "string", "format": "binary", "description": "the query image file"},
                        **{f: {"type": "string"} for f in FORM_FIELDS},
                    },
                }},
            },
        }
    }

    @app.post("/search", response_model=SearchResponse, openapi_extra=search_body, responses=ERROR_RESPONSES,
              summary="Search an index with a text, an image, an embedding or an indexed item")
    async def search(request: Request, format: Literal["json", "csv"] = "json") -> Response:
        start = time.perf_counter()
        req, image = await service.parse_search(request)
        index = service.index(req.index)
        if req.k > limits.max_k:
            raise ServiceError(422, f"k = {req.k} is too large; this service answers k from 1 to {limits.max_k}")
        results, described = await service.run(req, index, image)
        body = {"index": index.name, "modality": index.modality, "query": _json_safe(described),
                "score": results.score, "higher_is_better": bool(results.higher_is_better),
                "exact": bool(results.exact), "k": req.k, "results": await service.hits(index, results)}
        body["took_ms"] = round((time.perf_counter() - start) * 1000, 3)
        if not body["results"]:
            body["empty_reason"] = await service.empty_reason(index, req, described)
        if format == "csv":
            return Response(results_csv(body), media_type="text/csv; charset=utf-8",
                            headers={"content-disposition": 'attachment; filename="probclip-results.csv"'})
        return JSONResponse(body)

    @app.get("/items/{index:path}/{row_id}/image", responses={200: {"content": {"image/jpeg": {}}}, **ERROR_RESPONSES},
             response_class=Response, summary="A JPEG thumbnail of an indexed image")
    async def item_image(index: str, row_id: str, size: int = 256) -> Response:
        idx = service.index(index)
        row = service.row_id(idx, row_id)
        if not 16 <= size <= limits.max_thumbnail_px:
            raise ServiceError(422, f"size = {size} out of range; expected 16 to {limits.max_thumbnail_px} pixels")
        if idx.modality != "image":
            raise ServiceError(404, f"index {idx.name!r} holds texts, not images; row {row} has no image")
        try:
            data = await run_in_threadpool(_thumbnail_bytes, idx, row, size, service.policies[idx.name])
        except InputError as err:  # its message names the server's file: not for the client
            log.warning("thumbnail of row %d of %s: %s", row, idx.name, _first_line(err))
            raise ServiceError(404, f"the image of row {row} of {idx.name!r} cannot be read (missing or not an "
                                    "image)") from err
        if data is None:
            raise ServiceError(404, f"row {row} of index {idx.name!r} has no image")
        return Response(data, media_type="image/jpeg", headers={"cache-control": "private, max-age=3600"})

    @app.get("/items/{index:path}/{row_id}", response_model=ItemInfo, responses=ERROR_RESPONSES,
             summary="Metadata and uncertainty of one indexed item")
    async def item(index: str, row_id: str) -> ItemInfo:
        idx = service.index(index)
        row = service.row_id(idx, row_id)
        meta = (await run_in_threadpool(idx.metadata, [row]))[0]
        u = float(meta["u"])
        scale = service.scales[idx.name]
        await scale.ready()
        return ItemInfo(index=idx.name, row_id=row, uncertainty=u, uncertainty_percentile=scale.percentile(u),
                        metadata=_json_safe(service.policies[idx.name].public(dict(meta))),
                        image_url=service.image_url(idx, row))

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics (requests, latency, errors, batches)",
             responses={200: {"content": {"text/plain": {}}}})
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)

    @app.get("/", response_class=FileResponse, include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(STATIC_DIR / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    app.include_router(clip_retrieval_router(service))

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (SearchRequest,):
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    # Outermost last: metrics see every answer, including 400, 401, 403 and 413 from the guards inside them; CORS
    # headers go on the API key's 401 too, so a front end on an allowed origin can read why it was refused.
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
    return app
