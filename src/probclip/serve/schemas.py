"""The service's request and response bodies (pydantic models; they also make the OpenAPI schema at ``/docs``).

The search options of ``SearchRequest`` are made from ``probclip.search.options.SearchOptions``
(:func:`search_option_fields`): the same names, defaults, help and accepted values, checked by the same function,
so a bad value gets the message the Python API and the CLI give. ``deduplicate`` is the one option of the service
alone (it hides copies among the results).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic_core import PydanticCustomError

from ..errors import UsageError
from ..search.options import SCORES, SearchOptions, check_option, option_specs, option_types

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
    "search_option_fields",
]


class EmbeddingQuery(BaseModel):
    """A query given as a diagonal Gaussian: ``mean`` and ``logvar``, both of the index's size D."""

    model_config = ConfigDict(extra="forbid")
    mean: list[float] = Field(description="[D] the Gaussian mean (normalised to unit length by the service)")
    logvar: list[float] = Field(description="[D] log sigma^2 per dimension")
    modality: Literal["text", "image"] | None = Field(
        None, description="what the embedding was encoded from; lets the collection's hierarchy head rank "
                          "'includes' / 'included' (without it the inclusion test ranks an embedding)")


class ItemQuery(BaseModel):
    """A query given as an indexed item: its stored embedding is the query (click a result to search with it)."""

    model_config = ConfigDict(extra="forbid")
    index: str = Field(description="name of the index that holds the item (see GET /indices)")
    row_id: int = Field(ge=0, description="row id of the item in that index")


def _checked(name: str):
    """A pydantic after-validator running ``check_option(name, value)``: its one-line message becomes the error."""
    def check(value):
        try:
            check_option(name, value)
        except UsageError as err:
            raise PydanticCustomError("search_option", "{message}", {"message": str(err)}) from None
        return value

    return check


def search_option_fields() -> dict[str, tuple]:
    """The ``SearchOptions`` offered over HTTP as pydantic field definitions ``{name: (annotation, Field)}``: the
    dataclass's type, default and help; its accepted values in the schema; its check as the validator."""
    types, defaults = option_types(), SearchOptions.defaults("http")
    return {name: (Annotated[types[name], AfterValidator(_checked(name))],
                   Field(default, description=option_specs()[name].help,
                         json_schema_extra=option_specs()[name].json_schema() or None))
            for name, default in defaults.items()}


class SearchQuery(BaseModel):
    """The query of a search: exactly one of ``text``, ``image``, ``embedding`` or ``item``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"index": "collection/image", "text": "a red circle", "k": 5, "score": "csd"}]},
    )
    index: str | None = Field(None, description="name of the index to search (GET /indices); default: the first one")
    text: str | None = Field(None, description="a caption, encoded with the index's model")
    image: str | None = Field(None, description="an image file (PNG, JPEG, GIF, WebP, BMP) as base64")
    embedding: EmbeddingQuery | None = None
    item: ItemQuery | None = None

    @model_validator(mode="after")
    def _one_query(self) -> SearchQuery:
        given = [name for name in ("text", "image", "embedding", "item") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one query among text, image, embedding, item; got {len(given)}"
                + (f" ({', '.join(given)})" if given else "")
            )
        return self


_SearchRequestFields = create_model(
    "SearchRequestFields", __base__=SearchQuery, **search_option_fields(),
    deduplicate=(bool, Field(False, description="hide items whose stored embedding equals (or nearly equals) a "
                                                "better-ranked result's")))


class SearchRequest(_SearchRequestFields):  # type: ignore[misc, valid-type]
    """One search: exactly one of ``text``, ``image``, ``embedding`` or ``item``, the search options of
    ``SearchOptions`` offered over HTTP, and ``deduplicate``."""

    def search_options(self, **changes) -> SearchOptions:
        """The request's ``SearchOptions`` (with ``changes``, e.g. a larger ``k`` to hide duplicates from)."""
        return SearchOptions.from_values({name: getattr(self, name) for name in SearchOptions.names("http")},
                                         **changes)


class SearchHit(BaseModel):
    """One result: the row, its score, its uncertainty and its metadata."""

    row_id: int
    score: float
    probability: float | None = Field(
        None, description="where the hierarchy head ranked: the probability that the item is more general "
                          "(included) / more specific (includes) than the query, sigmoid(score)")
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
    ranked_by: str = Field(description="what computed the scores: 'closed-form sampled distance', 'cosine of "
                                       "means', 'inclusion test' or 'hierarchy head' (the score is then the head's "
                                       "logit and each result carries its probability)")
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
