"""The service's request and response bodies (pydantic models; they also make the OpenAPI schema at ``/docs``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..search.checks import MAX_ABS_EPS
from ..search.results import SCORES

__all__ = [
    "SCORES",
    "EmbeddingQuery",
    "ItemQuery",
    "SearchRequest",
    "SearchHit",
    "SearchResponse",
    "IndexInfo",
    "ItemInfo",
    "ErrorBody",
    "SearchOptionsInfo",
]

#: The scores a search may rank by: ``search.results.SCORES`` (see ``SearchIndex.search``).
Score = Literal[SCORES]  # type: ignore[valid-type]


class EmbeddingQuery(BaseModel):
    """A query given as a diagonal Gaussian: ``mean`` and ``logvar``, both of the index's size D."""

    model_config = ConfigDict(extra="forbid")
    mean: list[float] = Field(description="[D] the Gaussian mean (normalised to unit length by the service)")
    logvar: list[float] = Field(description="[D] log sigma^2 per dimension")


class ItemQuery(BaseModel):
    """A query given as an indexed item: its stored embedding is the query (click a result to search with it)."""

    model_config = ConfigDict(extra="forbid")
    index: str = Field(description="name of the index that holds the item (see GET /indices)")
    row_id: int = Field(ge=0, description="row id of the item in that index")


class SearchRequest(BaseModel):
    """One search: exactly one of ``text``, ``image``, ``embedding`` or ``item``, plus the ranking options."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"index": "collection/image", "text": "a red circle", "k": 5, "score": "csd"}]},
    )
    index: str | None = Field(None, description="name of the index to search (GET /indices); default: the first one")
    text: str | None = Field(None, description="a caption, encoded with the index's model")
    image: str | None = Field(None, description="an image file (PNG, JPEG, GIF, WebP, BMP) as base64")
    embedding: EmbeddingQuery | None = None
    item: ItemQuery | None = None
    k: int = Field(10, ge=1, description="number of results (at most the service's max_k)")
    score: Score = Field(
        "csd",
        description="csd: closed-form sampled distance (lower is closer); mean: cosine of the means; "
                    "includes: items included in the query (more specific); included: items that include the "
                    "query (more general); both keep only items for which the inclusion test holds in that "
                    "direction, so fewer than k may come back",
    )
    max_uncertainty: float | None = Field(None, gt=0, description="keep only items whose uncertainty u is below this")
    uncertainty_quantile: float | None = Field(
        None, gt=0, le=1, description="keep only items whose u is below this quantile of the index's u (0 < q <= 1)")
    eps: float = Field(
        0.0, ge=-MAX_ABS_EPS, le=MAX_ABS_EPS, allow_inf_nan=False,
        description="log-precision offset of the inclusion test (includes / included): 0 keeps the means in play; "
                    "training used -10 and -20")
    directional: bool = Field(
        True, description="includes / included: keep only items for which the test in the direction asked beats "
                          "the reverse test (fewer than k may come back)")
    deduplicate: bool = Field(
        False, description="hide items whose stored embedding equals (or nearly equals) a better-ranked result's")

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        given = [name for name in ("text", "image", "embedding", "item") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one query among text, image, embedding, item; got {len(given)}"
                + (f" ({', '.join(given)})" if given else "")
            )
        return self


class SearchHit(BaseModel):
    """One result: the row, its score, its uncertainty and its metadata."""

    row_id: int
    score: float
    uncertainty: float = Field(description="u = sum_d exp(logvar_d) of the item")
    uncertainty_percentile: float | None = Field(
        None, description="fraction of the index's items (sampled) with a lower u, 0..1")
    metadata: dict[str, Any]
    image_url: str | None = Field(None, description="thumbnail of the item's image (image indexes only)")


class SearchResponse(BaseModel):
    """Results of one search, best first."""

    index: str
    modality: str
    query: dict[str, Any] = Field(description="what was searched: kind and, for a text, the text")
    score: str
    higher_is_better: bool
    exact: bool = Field(description="True when the ranking is exact; False when an approximate index may miss items")
    k: int
    results: list[SearchHit]
    took_ms: float
    empty_reason: str | None = Field(
        None, description="when no result comes back: why, in words (e.g. the query is more uncertain than every "
                          "item, so none is more general)")


class IndexInfo(BaseModel):
    """One served index."""

    name: str
    modality: str
    rows: int
    dim: int
    model: str
    model_fingerprint: str
    kind: str
    exact: bool
    recall_at_10: float | None = Field(None, description="recall@10 of the CSD candidates: 1.0 when exact, else "
                                                         "reached on held-out queries when the index was built")
    uncertainty_quantiles: dict[str, float] = Field(
        description="quantiles of the items' uncertainty u (sampled), keys '0.05', '0.5', '0.95'")


class ItemInfo(BaseModel):
    """One indexed item."""

    index: str
    row_id: int
    uncertainty: float
    uncertainty_percentile: float | None
    metadata: dict[str, Any]
    image_url: str | None


class SearchOptionsInfo(BaseModel):
    """What a search may ask for: the scores, their direction, and the value of each option left out."""

    scores: list[str] = Field(description="the scores a search may rank by, the default first")
    higher_is_better: dict[str, bool] = Field(description="per score: True when a higher score ranks first")
    defaults: dict[str, Any] = Field(description="the value of each search option a request leaves out")
    max_k: int = Field(description="the largest k this service answers")


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a one-line message naming the bad value and what would be accepted."""

    detail: str
