"""The service's own routes: ``/health``, ``/indices``, ``/search/options``, ``POST /search``, ``/items/...``,
``/metrics`` and the page at ``/``. Each route receives the app's ``SearchService`` as the typed dependency
``ServiceDep``; errors are raised as exceptions and answered by ``errors.ERROR_TABLE``.
"""

from __future__ import annotations

import logging
import time
from importlib import resources
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from ..errors import InputError
from ..jsonsafe import json_safe
from ..search.layout import ShardFileError
from ..search.options import HIGHER_IS_BETTER, SCORES, SearchOptions
from .errors import ServiceError, first_line
from .export import results_csv
from .metrics import PROMETHEUS_CONTENT_TYPE
from .schemas import ErrorBody, IndexInfo, ItemInfo, SearchOptionsInfo, SearchRequest, SearchResponse
from .service import FORM_FIELDS, ServiceDep, thumbnail_bytes

__all__ = ["ERROR_RESPONSES", "STATIC_DIR", "router"]

log = logging.getLogger("probclip.serve")

STATIC_DIR = resources.files("probclip.serve") / "static"
ERROR_RESPONSES = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 413, 415, 422, 500, 503)}
#: The request body of ``POST /search`` in the OpenAPI schema: JSON (``SearchRequest``) or a multipart form.
SEARCH_BODY = {
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
router = APIRouter()


@router.head("/health", include_in_schema=False)  # probes that use HEAD get 200 too
@router.get("/health", summary="Liveness (never needs the API key)")
async def health(service: ServiceDep) -> dict:
    return {"status": "ok", "indices": len(service.indexes),
            "search_worker": "running" if service.batcher.running else "idle"}


@router.get("/indices", response_model=list[IndexInfo], summary="The served indexes", responses=ERROR_RESPONSES)
async def indices(service: ServiceDep) -> list[IndexInfo]:
    out = []
    for name, index in service.indexes.items():
        scale = service.scales[name]
        await scale.ready()
        out.append(IndexInfo(name=name, modality=index.modality, rows=index.rows, dim=index.dim,
                             model=index.model_name, model_fingerprint=index.model_fingerprint,
                             kind=index.kind, exact=bool(index.exact), recall_at_10=index.recall_at_10,
                             uncertainty_quantiles=scale.quantiles()))
    return out


@router.get("/search/options", response_model=SearchOptionsInfo, responses=ERROR_RESPONSES,
            summary="The scores a search may rank by and the defaults of the search options")
async def search_options(service: ServiceDep) -> SearchOptionsInfo:
    defaults = {**SearchOptions.defaults("http"), "deduplicate": SearchRequest.model_fields["deduplicate"].default}
    return SearchOptionsInfo(scores=list(SCORES), higher_is_better={s: HIGHER_IS_BETTER[s] for s in SCORES},
                             defaults=defaults, max_k=service.limits.max_k)


@router.post("/search", response_model=SearchResponse, openapi_extra=SEARCH_BODY, responses=ERROR_RESPONSES,
             summary="Search an index with a text, an image, an embedding or an indexed item")
async def search(request: Request, service: ServiceDep, format: Literal["json", "csv"] = "json") -> Response:
    start = time.perf_counter()
    req, image = await service.parse_search(request)
    index = service.index(req.index)
    if req.k > service.limits.max_k:
        raise ServiceError(422, f"k = {req.k} is too large; this service answers k from 1 to {service.limits.max_k}")
    results, described = await service.run(req, index, image)
    body = {"index": index.name, "modality": index.modality, "query": json_safe(described, other=str),
            "score": results.score, "higher_is_better": bool(results.higher_is_better),
            "exact": bool(results.exact), "ranked_by": results.ranked_by, "k": req.k,
            "results": await service.hits(index, results)}
    body["took_ms"] = round((time.perf_counter() - start) * 1000, 3)
    if not body["results"]:
        body["empty_reason"] = await service.empty_reason(index, req, described)
    if format == "csv":
        return Response(results_csv(body), media_type="text/csv; charset=utf-8",
                        headers={"content-disposition": 'attachment; filename="probclip-results.csv"'})
    return JSONResponse(body)


@router.get("/items/{index:path}/{row_id}/image", responses={200: {"content": {"image/jpeg": {}}}, **ERROR_RESPONSES},
            response_class=Response, summary="A JPEG thumbnail of an indexed image")
async def item_image(index: str, row_id: str, service: ServiceDep, size: int = 256) -> Response:
    idx = service.index(index)
    row = service.row_id(idx, row_id)
    limit = service.limits.max_thumbnail_px
    if not 16 <= size <= limit:
        raise ServiceError(422, f"size = {size} out of range; expected 16 to {limit} pixels")
    if idx.modality != "image":
        raise ServiceError(404, f"index {idx.name!r} holds texts, not images; row {row} has no image")
    try:
        data = await run_in_threadpool(thumbnail_bytes, idx, row, size, service.policies[idx.name])
    except ShardFileError:
        raise  # the collection is damaged, not this image: answered 503 like any search
    except InputError as err:  # its message names the server's file: not for the client
        log.warning("thumbnail of row %d of %s: %s", row, idx.name, first_line(err))
        raise ServiceError(404, f"the image of row {row} of {idx.name!r} cannot be read (missing or not an "
                                "image)") from err
    if data is None:
        raise ServiceError(404, f"row {row} of index {idx.name!r} has no image")
    return Response(data, media_type="image/jpeg", headers={"cache-control": "private, max-age=3600"})


@router.get("/items/{index:path}/{row_id}", response_model=ItemInfo, responses=ERROR_RESPONSES,
            summary="Metadata and uncertainty of one indexed item")
async def item(index: str, row_id: str, service: ServiceDep) -> ItemInfo:
    idx = service.index(index)
    row = service.row_id(idx, row_id)
    meta = (await run_in_threadpool(idx.metadata, [row]))[0]
    u = float(meta["u"])
    scale = service.scales[idx.name]
    await scale.ready()
    return ItemInfo(index=idx.name, row_id=row, uncertainty=u, uncertainty_percentile=scale.percentile(u),
                    metadata=json_safe(service.policies[idx.name].public(dict(meta)), other=str),
                    image_url=service.image_url(idx, row))


@router.get("/metrics", response_class=Response, summary="Prometheus metrics (requests, latency, errors, batches)",
            responses={200: {"content": {"text/plain": {}}}})
async def prometheus_metrics(service: ServiceDep) -> Response:
    return Response(service.metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)


@router.get("/", response_class=FileResponse, include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(str(STATIC_DIR / "index.html"), media_type="text/html")
