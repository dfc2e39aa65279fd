"""The service's state and the steps of a search request: parse the body, make the query, search, present hits.

``SearchService`` holds the served ``SearchIndex`` objects by name with their batcher, limits, metrics,
uncertainty scales and metadata policies; the routes (``routes.py``, ``clip_compat.py``) receive it as a typed
dependency (``ServiceDep``). Model and index work runs in the batcher's worker thread or the thread pool, never on
the event loop.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from dataclasses import replace
from typing import Annotated
from urllib.parse import quote

import torch
from fastapi import Depends, Request
from PIL import Image
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ..embedding import ProbEmbedding
from ..errors import UsageError
from ..jsonsafe import json_safe
from ..search import SearchIndex, SearchResults
from ..search.head_ranking import head_ranking
from .batching import SearchBatcher
from .decode_slots import DecodeSlots, decode_upload
from .dedup import candidate_rows, fetch_k, hide_duplicates
from .errors import ServiceError, first_line, validation_message
from .explain import empty_reason
from .limits import ImageTooLargeError, ServiceLimits
from .metadata import MetadataPolicy
from .metrics import ServiceMetrics
from .schemas import SearchRequest
from .uncertainty_scale import UncertaintyScale

__all__ = ["FORM_FIELDS", "MAX_ABS_LOGVAR", "SearchService", "ServiceDep", "get_service", "named_indexes",
           "parse_json_body", "thumbnail_bytes"]

log = logging.getLogger("probclip.serve")


def parse_json_body(body: bytes):
    """The parsed JSON of a request body; a one-line 400 ``ServiceError`` when it is malformed or nested too deeply
    (every JSON endpoint: ``/search`` and the clip-retrieval ones)."""
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ServiceError(400, f"malformed JSON body: {first_line(err)}") from err
    except RecursionError as err:
        raise ServiceError(400, "malformed JSON body: nested too deeply") from err

#: Fields a multipart search form may carry besides the ``image`` file: ``SearchRequest``'s, less the JSON-only
#: query kinds.
FORM_FIELDS = tuple(name for name in SearchRequest.model_fields if name not in ("image", "embedding", "item"))
#: Largest |logvar| accepted in an embedding query (exp(30) ~ 1e13: far beyond any trained model's variances).
MAX_ABS_LOGVAR = 30.0


#: A query as the batcher takes it: a text, a decoded image or a ``ProbEmbedding`` [1, D].
Query = str | Image.Image | ProbEmbedding


class SearchService:
    """The state behind the routes: the indexes by name, the batcher, limits, metrics, uncertainty scales, metadata
    policies and decode slots; and the steps of a search request (parse, encode, search, present)."""

    def __init__(self, indexes: Mapping[str, SearchIndex], limits: ServiceLimits, batcher: SearchBatcher,
                 metrics: ServiceMetrics, metadata_fields: Iterable[str] | None = None):
        self.indexes, self.limits, self.batcher, self.metrics = indexes, limits, batcher, metrics
        self.scales = {name: UncertaintyScale(index) for name, index in indexes.items()}
        self.policies = {name: MetadataPolicy(index, metadata_fields) for name, index in indexes.items()}
        self.decode_slots = DecodeSlots(limits.max_concurrent_decodes)

    def index(self, name: str | None) -> SearchIndex:
        if name is not None and name not in self.indexes:
            raise ServiceError(404, f"unknown index {name!r}; served indexes: {', '.join(self.indexes)}")
        index = next(iter(self.indexes.values())) if name is None else self.indexes[name]
        changed = getattr(index, "changed", None)  # a collection rebuilt in place is never searched half-way
        reason = changed() if changed is not None else None
        if reason:
            raise ServiceError(503, f"index {index.name!r} changed on disk since the service loaded it: {reason}; "
                                    "restart the service to serve the new collection")
        return index

    def row_id(self, index: SearchIndex, raw: str | int) -> int:
        text = str(raw)
        if not (text.isascii() and text.isdigit()) or int(text) >= index.rows:
            raise ServiceError(404, f"row id {text!r} not in index {index.name!r}: expected an integer from 0 to "
                                    f"{index.rows - 1}")
        return int(text)

    def image_url(self, index: SearchIndex, row_id: int) -> str | None:
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
        payload = parse_json_body(await request.body())
        if not isinstance(payload, dict):
            raise ServiceError(400, f"the JSON body must be an object; got {type(payload).__name__}")
        try:
            req = SearchRequest.model_validate(payload)
        except ValidationError as err:
            raise ServiceError(422, validation_message(err)) from err
        image = None
        if req.image is not None:
            if len(req.image) > self.limits.max_image_bytes * 4 // 3 + 4:
                raise ImageTooLargeError(f"base64 image of {len(req.image)} characters refused: the limit is "
                                         f"{self.limits.max_image_bytes} bytes of image")
            try:
                image = base64.b64decode(req.image, validate=True)
            except (binascii.Error, ValueError) as err:
                raise ServiceError(400, f"'image' is not valid base64: {first_line(err)}") from err
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
            raise ServiceError(422, validation_message(err)) from err
        return req, image

    async def query_of(self, req: SearchRequest, index: SearchIndex, image: bytes | None) -> tuple[str, Query, dict]:
        """``(kind, query, description)`` for the batcher: a text, a decoded image or a ``ProbEmbedding`` [1, D]
        (an item's description names its ``modality``)."""
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
            described = {"kind": "embedding", "uncertainty": float(emb.uncertainty[0])}
            if req.embedding.modality is not None:
                described["modality"] = req.embedding.modality
            return "embedding", emb, described
        source = self.index(req.item.index)
        row = self.row_id(source, req.item.row_id)
        emb = await run_in_threadpool(source.embedding, [row])
        emb = ProbEmbedding(emb.mean.float().reshape(1, -1), emb.logvar.float().reshape(1, -1))
        if emb.dim != index.dim:
            raise ServiceError(422, f"item of {source.name!r} has {emb.dim} dimensions, index {index.name!r} has "
                                    f"{index.dim}")
        return "embedding", emb, {"kind": "item", "index": source.name, "row_id": row, "modality": source.modality,
                                  "uncertainty": float(emb.uncertainty[0])}

    async def run(self, req: SearchRequest, index: SearchIndex, image: bytes | None) -> tuple[SearchResults, dict]:
        """Search ``index`` for one request: ``(SearchResults, description of the query)``.

        An image query holds a decode slot from decoding until the worker has encoded it; with ``deduplicate``,
        more results are fetched and the duplicates among them hidden (``dedup.hide_duplicates``).
        """
        k = fetch_k(req.k, index.rows) if req.deduplicate else req.k
        params = req.search_options(k=k)
        self.batcher.start()  # idempotent: also serves apps driven without their lifespan (ASGI test transports)
        async with self.decode_slots.hold() if image is not None else nullcontext():
            kind, query, described = await self.query_of(req, index, image)
            modality = kind if kind in ("text", "image") else described.get("modality")  # None: raw numbers
            answer = await self.batcher.search(index, kind, query, params, modality)
            del query
        results = answer.results
        if req.deduplicate:
            shown, hidden = await _deduplicated(index, results, req.k)
            while len(shown) < req.k and len(results) == params.k < index.rows:  # copies hid too many: fetch more
                params = replace(params, k=fetch_k(req.k, index.rows, params.k))
                results = (await self.batcher.search(index, "embedding", answer.query, params, modality)).results
                shown, hidden = await _deduplicated(index, results, req.k)
            results = shown
            described["duplicates_hidden"] = hidden
        described.setdefault("uncertainty", answer.query_uncertainty)
        self.metrics.search_queries.labels(index.name, kind).inc()
        return results, described

    async def hits(self, index: SearchIndex, results: SearchResults) -> list[dict]:
        """The results as ``SearchHit``-shaped dicts (built directly: validating them again would cost more than
        the search of a small index)."""
        scale = self.scales[index.name]
        await scale.ready()
        public = self.policies[index.name].public
        probabilities = results.probabilities
        probabilities = [None] * len(results) if probabilities is None else probabilities.tolist()
        return [{"row_id": row_id, "score": json_safe(score), "probability": json_safe(probability),
                 "uncertainty": json_safe(u), "uncertainty_percentile": scale.percentile(u),
                 "metadata": json_safe(public(meta), other=str), "image_url": self.image_url(index, row_id)}
                for row_id, score, probability, u, meta in zip(results.ids.tolist(), results.scores.tolist(),
                                                               probabilities, results.uncertainty.tolist(),
                                                               results.metadata, strict=True)]

    async def empty_reason(self, index: SearchIndex, req: SearchRequest, described: dict) -> str | None:
        """Why a search found nothing (see ``probclip.serve.explain``)."""
        scale = self.scales[index.name]
        await scale.ready()
        query_u = described.get("uncertainty")
        percentile = None if query_u is None else scale.percentile(query_u)
        filtered = req.max_uncertainty is not None or req.uncertainty_quantile is not None
        kind = described.get("kind", "")
        ranking = None
        if req.hierarchy_head and req.directional and req.score in ("includes", "included"):
            ranking = head_ranking(index.head.get(), req.score, kind if kind in ("text", "image") else
                                   described.get("modality"), index.modality)
        head_check = None if ranking is None else "half" if ranking.reverse_kind is None else "reverse"
        return empty_reason(req.score, kind, query_u, index.modality, percentile, scale.quantiles().get("0.5"),
                            filtered, head_check)


async def _deduplicated(index: SearchIndex, results: SearchResults, k: int) -> tuple[SearchResults, int]:
    """``hide_duplicates`` in the thread pool when stored rows must be read; on the event loop when the results'
    ``u`` already rules every copy out (a few microseconds: cheaper than the hand-over to a thread)."""
    if candidate_rows(results.uncertainty).size:
        return await run_in_threadpool(hide_duplicates, index, results, k)
    return hide_duplicates(index, results, k)


def thumbnail_bytes(index: SearchIndex, row_id: int, size: int, policy: MetadataPolicy) -> bytes | None:
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


def named_indexes(indexes: Mapping[str, SearchIndex] | Iterable[SearchIndex]) -> dict[str, SearchIndex]:
    """The indexes by name, in order; ``UsageError`` for none or two with one name."""
    items = list(indexes.values()) if isinstance(indexes, Mapping) else list(indexes)
    if not items:
        raise UsageError("create_app needs at least one SearchIndex; got none")
    named: dict[str, SearchIndex] = {}
    for index in items:
        if index.name in named:
            raise UsageError(f"two indexes are named {index.name!r}; index names must be unique")
        named[index.name] = index
    return named


def get_service(request: Request) -> SearchService:
    """The app's ``SearchService`` (``app.state.service``, set by ``create_app``)."""
    return request.app.state.service


#: A route parameter typed ``ServiceDep`` receives the app's ``SearchService``.
ServiceDep = Annotated[SearchService, Depends(get_service)]
