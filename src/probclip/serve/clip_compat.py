"""clip-retrieval's back-end contract, so its ``ClipClient`` and its web front end work against ``probclip serve``.

``GET /indices-list`` lists the served collections; ``POST /knn-service`` answers a clip-retrieval query with a
list of ``{"id", "caption", "url", "similarity", ...}``; ``POST /metadata`` returns ``[{"id", "metadata"}]`` for
row ids (the front end fetches the metadata of results past the first page there). Bodies are read as JSON
whatever their content type (the front end sends ``text/plain``, ``ClipClient`` none), like clip-retrieval does.

The ranking is ``POST /search`` with ``score = "csd"``: the same order, the same ties. ``similarity`` (higher is
better) is ``1 - (CSD - u_q) / 2 = cos(mu_q, mu_i) - u_i / 2`` for unit means: the cosine clip-retrieval users know,
less half the item's uncertainty, and a strictly decreasing function of CSD for a given query.

``/indices-list`` names the served collections (``collection``); a query's ``modality`` picks the collection's
image or text index (``collection/image``), as in clip-retrieval. A full index name is accepted too.

Options probclip cannot honour (``use_mclip``, ``use_safety_model``, ``use_violence_detector``,
``aesthetic_score``, ``aesthetic_weight``, unknown fields) are accepted and named in the ``X-Probclip-Ignored``
header whenever they would have changed the answer; ``image_url`` is never fetched (an ``image_url``-only query is
refused). ``num_result_ids`` above the service's ``max_k`` is lowered to it and said
in ``X-Probclip-Adjusted``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..jsonsafe import json_safe
from ..search import SearchIndex
from .schemas import EmbeddingQuery, SearchRequest
from .service import SearchService, parse_json_body

__all__ = ["KnnRequest", "clip_retrieval_router", "similarity_from_csd"]

#: clip-retrieval options probclip accepts and does not apply (their "off" values need no mention).
IGNORED_OPTIONS = ("use_mclip", "use_safety_model", "use_violence_detector", "aesthetic_score", "aesthetic_weight")
#: Largest ``ids`` list of one ``/metadata`` request.
MAX_METADATA_IDS = 10_000


class KnnRequest(BaseModel):
    """A clip-retrieval ``/knn-service`` body (``clip_retrieval/clip_client.py``, ``clip_back.py``)."""

    model_config = ConfigDict(extra="allow")
    text: str | None = None
    image: str | None = Field(None, description="an image file as base64 (a data: URL prefix is accepted)")
    image_url: str | None = Field(None, description="accepted, never fetched")
    embedding_input: list[float] | EmbeddingQuery | None = Field(
        None, description="a query vector of the index's size D (its mean), or {mean, logvar}")
    modality: Literal["image", "text"] = "image"
    num_images: int = Field(40, ge=1)
    num_result_ids: int | None = Field(None, ge=1)
    indice_name: str | None = None
    deduplicate: bool = False
    use_mclip: bool | None = None
    use_safety_model: bool | None = None
    use_violence_detector: bool | None = None
    aesthetic_score: int | str | None = None
    aesthetic_weight: float | str | None = None


def similarity_from_csd(csd: float, query_u: float) -> float:
    """clip-retrieval's ``similarity`` (higher is better) of a result at closed-form sampled distance ``csd``."""
    return 1.0 - (csd - query_u) / 2.0


def _error(status: int, detail: str) -> HTTPException:
    return HTTPException(status, detail)


def _validation_detail(err: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('msg', 'invalid')}"
             for e in err.errors()]
    return "invalid knn-service request: " + "; ".join(parts)


def _ignored(knn: KnnRequest) -> list[str]:
    named = [name for name in IGNORED_OPTIONS if getattr(knn, name) not in (None, False, "")]
    return named + sorted(knn.model_extra or {})


def clip_retrieval_router(service: SearchService) -> APIRouter:
    """The routes of clip-retrieval's back end over a service's indexes."""
    router = APIRouter(tags=["clip-retrieval"])

    def resolve(name: str | None, modality: str | None) -> SearchIndex:
        if name is None:
            name = next(iter(service.indexes))
        if name in service.indexes:
            index = service.indexes[name]
            if modality is not None and index.modality != modality:
                raise _error(422, f"index {name!r} holds {index.modality}s but modality is {modality!r}; use the "
                                  f"collection name with modality, or the {modality} index's name")
            return index
        full = f"{name}/{modality or 'image'}"
        if full in service.indexes:
            return service.indexes[full]
        raise _error(404, f"unknown indice_name {name!r} (modality {modality or 'image'!r}); served: "
                          f"{', '.join(service.indexes)}")

    def url_of(request: Request, index: SearchIndex, row_id: int) -> str | None:
        path = service.image_url(index, row_id)
        return None if path is None else str(request.base_url).rstrip("/") + path

    @router.get("/indices-list", summary="clip-retrieval: the served collections (indice names)")
    async def indices_list() -> list[str]:
        return list(dict.fromkeys(name.rsplit("/", 1)[0] for name in service.indexes))

    @router.post("/knn-service", summary="clip-retrieval: nearest items to a text, an image or an embedding")
    async def knn_service(request: Request) -> JSONResponse:
        payload = parse_json_body(await request.body())
        if not isinstance(payload, dict):
            raise _error(400, f"the JSON body must be an object; got {type(payload).__name__}")
        try:
            knn = KnnRequest.model_validate(payload)
        except ValidationError as err:
            raise _error(422, _validation_detail(err)) from err
        index = resolve(knn.indice_name, knn.modality)
        ignored, adjusted = _ignored(knn), []
        wanted = max(knn.num_images, knn.num_result_ids or 0)
        k = min(wanted, service.limits.max_k)
        if k < wanted:
            adjusted.append(f"num_result_ids {wanted} -> {k} (the service's max k)")
        fields: dict[str, Any] = {"index": index.name, "k": k, "score": "csd", "deduplicate": knn.deduplicate}
        image = None
        if knn.text:
            fields["text"] = knn.text
            ignored += [name for name in ("image", "embedding_input") if getattr(knn, name) is not None]
        elif knn.image:
            data = knn.image.split(",", 1)[1] if knn.image.startswith("data:") else knn.image
            if len(data) > service.limits.max_image_bytes * 4 // 3 + 4:
                raise _error(413, f"base64 image of {len(data)} characters refused: the limit is "
                                  f"{service.limits.max_image_bytes} bytes of image")
            try:
                image = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError) as err:
                raise _error(400, "'image' is not valid base64") from err
            fields["image"] = "base64"  # a placeholder: the bytes travel apart
        elif knn.embedding_input is not None:
            emb = knn.embedding_input
            fields["embedding"] = emb if isinstance(emb, EmbeddingQuery) else \
                EmbeddingQuery(mean=emb, logvar=[0.0] * len(emb))  # the query's variance does not change the order
        elif knn.image_url:
            raise _error(422, "image_url is never fetched by probclip serve; send the image itself as base64 in "
                              "'image'")
        else:
            raise _error(422, "give one of text, image (base64) or embedding_input")
        if knn.image_url:
            ignored.append("image_url")
        try:
            req = SearchRequest.model_validate(fields)
        except ValidationError as err:
            raise _error(422, _validation_detail(err)) from err
        results, described = await service.run(req, index, image)
        hits = await service.hits(index, results)
        query_u = float(described["uncertainty"])
        items = []
        for hit in hits:
            meta = hit["metadata"]
            items.append({**meta, "id": hit["row_id"], "caption": meta.get("caption"),
                          "url": url_of(request, index, hit["row_id"]),
                          "similarity": None if hit["score"] is None else similarity_from_csd(hit["score"], query_u),
                          "uncertainty": hit["uncertainty"], "uncertainty_percentile": hit["uncertainty_percentile"]})
        headers = {}
        if ignored:
            headers["x-probclip-ignored"] = ", ".join(ignored)
        if adjusted:
            headers["x-probclip-adjusted"] = "; ".join(adjusted)
        return JSONResponse(items, headers=headers)

    @router.post("/metadata", summary="clip-retrieval: the metadata of row ids")
    async def metadata(request: Request) -> list[dict]:
        payload = parse_json_body(await request.body())
        ids = payload.get("ids") if isinstance(payload, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise _error(422, "the body must be {\"ids\": [row ids], \"indice_name\": NAME}")
        if len(ids) > MAX_METADATA_IDS:
            raise _error(413, f"{len(ids)} ids refused; send at most {MAX_METADATA_IDS}")
        name = payload.get("indice_name")
        index = resolve(name if isinstance(name, str) else None, None)
        bad = [i for i in ids if not 0 <= i < index.rows]
        if bad:
            raise _error(404, f"row id {bad[0]} not in index {index.name!r}: expected 0 to {index.rows - 1}")
        rows = await run_in_threadpool(index.metadata, ids) if ids else []
        public = service.policies[index.name].public
        return json_safe([{"id": i, "metadata": {**public(dict(meta)), "url": url_of(request, index, i)}}
                          for i, meta in zip(ids, rows)], other=str)

    return router
