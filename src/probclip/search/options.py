"""``SearchOptions``: the one definition of a search's options: names, defaults, help, ranges and their checks.

Every surface is made from it:

- the Python API: ``SearchIndex.search(query, k, score=..., eps=...)`` or
  ``SearchIndex.search(query, options=SearchOptions(...))``;
- the CLI: ``probclip search``'s flags (:func:`add_search_arguments`, :func:`options_from_args`);
- the HTTP schema: ``POST /search``'s option fields and ``GET /search/options``'s defaults
  (``probclip.serve.schemas.search_option_fields``).

Each field says where it is offered (``surfaces``: the API offers every option; ``oversample`` and ``exhaustive``
tune the approximate candidate search and are left out of the CLI and HTTP). A value that cannot mean anything is a
``UsageError`` with one line naming it and what is accepted (:func:`check_option`), raised when a ``SearchOptions``
is made, so the API, the CLI (exit status 2) and HTTP (a 422 answer) give the same message.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError

__all__ = ["HIGHER_IS_BETTER", "MAX_ABS_EPS", "SCORES", "SURFACES", "OptionSpec", "SearchOptions",
           "add_search_arguments", "check_option", "option_specs", "options_from_args"]

#: Scores a search can rank by, the default first: ``csd`` (closed-form sampled distance, lower is closer), ``mean``
#: (cosine of the means), ``includes`` (the inclusion test "item included in the query": more specific items first)
#: and ``included`` ("query included in the item": more general items first).
SCORES = ("csd", "mean", "includes", "included")
#: Per score: True when a higher score ranks first.
HIGHER_IS_BETTER = {"csd": False, "mean": True, "includes": True, "included": True}
#: Largest |eps| of the inclusion test: its precisions are exp(eps - logvar), which must stay finite in float64.
MAX_ABS_EPS = 100.0
#: Where an option may be given: the Python API, the ``probclip search`` CLI, the HTTP request body.
SURFACES = ("api", "cli", "http")


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _positive_int(name: str, value) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UsageError(f"{name} must be a positive integer; got {value!r}")


def _optional_positive_int(name: str, value) -> None:
    if value is not None:
        _positive_int(name, value)


def _score(name: str, value) -> None:
    if not isinstance(value, str) or value not in SCORES:
        raise UsageError(f"{name} must be one of {list(SCORES)}; got {value!r}")


def _max_uncertainty(name: str, value) -> None:
    if value is not None and not (_is_number(value) and math.isfinite(value) and value > 0):
        raise UsageError(f"{name} must be a finite number > 0 (u, the sum of an item's variances, is positive); "
                         f"got {value!r}")


def _quantile(name: str, value) -> None:
    if value is not None and not (_is_number(value) and 0 < value <= 1):
        raise UsageError(f"{name} must lie in (0, 1]; got {value!r}")


def _eps(name: str, value) -> None:
    if not (_is_number(value) and math.isfinite(value) and abs(value) <= MAX_ABS_EPS):
        raise UsageError(f"{name} must be a finite number from -{MAX_ABS_EPS:g} to {MAX_ABS_EPS:g} (training used "
                         f"-10 and -20); got {value!r}")


def _flag(name: str, value) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise UsageError(f"{name} must be true or false; got {value!r}")


def _optional_flag(name: str, value) -> None:
    if value is not None and not isinstance(value, (bool, np.bool_)):
        raise UsageError(f"{name} must be true, false or None (decided by the collection's size); got {value!r}")


@dataclass(frozen=True)
class OptionSpec:
    """How one option is offered and checked.

    ``help``: one sentence for ``--help`` and the OpenAPI schema; ``surfaces``: where it may be given
    (:data:`SURFACES`); ``cli_flag``: its ``probclip search`` flag (default ``--`` + the name with dashes; a flag
    defaulting to True also gets its ``--no-`` form); ``choices``, ``minimum``, ``exclusive_minimum``, ``maximum``:
    what the schema advertises; ``check(name, value)``: raises ``UsageError`` for a value out of range.
    """

    help: str
    check: Callable[[str, object], None]
    surfaces: tuple[str, ...] = SURFACES
    cli_flag: str | None = None
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    exclusive_minimum: float | None = None
    maximum: float | None = None

    def json_schema(self) -> dict:
        """The JSON-schema keywords that describe the accepted values (``enum``, ``minimum``, ...)."""
        keys = (("enum", list(self.choices) if self.choices else None), ("minimum", self.minimum),
                ("exclusiveMinimum", self.exclusive_minimum), ("maximum", self.maximum))
        return {key: value for key, value in keys if value is not None}


def _option(default, spec: OptionSpec):
    return field(default=default, metadata={"spec": spec})


@dataclass(frozen=True)
class SearchOptions:
    """The options of one search (see the module docstring); checked when made (``UsageError`` naming a bad value).

    Attributes:
        k: results per query (a query can get fewer: a filter, or a directional inclusion score, keeps fewer).
        score: ``csd``, ``mean``, ``includes`` or ``included`` (:data:`SCORES`).
        max_uncertainty: keep only items with ``u <= max_uncertainty`` (None: no bound).
        uncertainty_quantile: keep only items with ``u`` at most this quantile of the collection's ``u``.
        eps: log-precision offset of the inclusion test (0: the means matter; training used -10 / -20).
        directional: ``includes`` / ``included`` keep only the items for which the test in the direction asked beats
            the reverse test (with the hierarchy head: its logit beats the reverse one, or ``P > 0.5``).
        hierarchy_head: rank ``includes`` / ``included`` by the collection's hierarchy head when it has one for the
            pair of modalities (:mod:`probclip.search.head_ranking`); False: by the inclusion test.
        oversample: candidates per result for approximate kinds and the inclusion test (None: the index's own).
        exhaustive: scan every row for the inclusion test (None: when rows x D is small enough).
    """

    k: int = _option(10, OptionSpec("number of results per query", _positive_int, minimum=1))
    score: str = _option("csd", OptionSpec(
        "ranking score: csd, closed-form sampled distance (lower is closer); mean, cosine of the means; includes, "
        "items included in the query (more specific); included, items that include the query (more general)",
        _score, choices=SCORES))
    max_uncertainty: float | None = _option(None, OptionSpec(
        "keep only items whose uncertainty u (the sum of their variances) is at most this", _max_uncertainty,
        exclusive_minimum=0))
    uncertainty_quantile: float | None = _option(None, OptionSpec(
        "keep only items whose u is at most this quantile of the collection's u (0 < q <= 1)", _quantile,
        exclusive_minimum=0, maximum=1))
    eps: float = _option(0.0, OptionSpec(
        "log-precision offset of the inclusion test (includes / included): 0 keeps the means in play; training used "
        "-10 and -20; it does not apply where the hierarchy head ranks", _eps, minimum=-MAX_ABS_EPS,
        maximum=MAX_ABS_EPS))
    directional: bool = _option(True, OptionSpec(
        "includes / included: keep only items for which the test in the direction asked beats the reverse test "
        "(with the hierarchy head: its probability beats the reverse one, or exceeds 0.5 where it has no reverse; "
        "fewer than k may come back); off: rank every item by the raw score", _flag, cli_flag="--direction-check"))
    hierarchy_head: bool = _option(True, OptionSpec(
        "rank more general / more specific (included / includes) by the collection's hierarchy head when it has one "
        "for the two modalities; off: by the plain inclusion test", _flag))
    oversample: int | None = _option(None, OptionSpec(
        "candidates per result for the approximate index kinds and the inclusion test (default: the index's own)",
        _optional_positive_int, surfaces=("api",), minimum=1))
    exhaustive: bool | None = _option(None, OptionSpec(
        "scan every row for the inclusion test (default: when the collection's rows x D is small enough)",
        _optional_flag, surfaces=("api",)))

    def __post_init__(self):
        for name, spec in _SPECS.items():
            spec.check(name, getattr(self, name))

    @classmethod
    def from_values(cls, values: Mapping[str, object] | None = None, *, base: SearchOptions | None = None,
                    **more) -> SearchOptions:
        """Options from ``base`` (default: the defaults) with ``values`` and ``more`` changed; ``UsageError`` for an
        unknown name or a bad value."""
        changes = {**(values or {}), **more}
        unknown = sorted(set(changes) - set(_SPECS))
        if unknown:
            raise UsageError(f"unknown search option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                             f"accepted: {', '.join(_SPECS)}")
        if base is None:
            return cls(**changes)
        return dataclasses.replace(base, **changes) if changes else base

    @staticmethod
    def names(surface: str = "api") -> tuple[str, ...]:
        """The options offered on ``surface`` (one of :data:`SURFACES`), in definition order."""
        if surface not in SURFACES:
            raise ValueError(f"surface must be one of {list(SURFACES)}; got {surface!r}")
        return tuple(name for name, spec in _SPECS.items() if surface in spec.surfaces)

    @classmethod
    def defaults(cls, surface: str = "api") -> dict:
        """``{name: default}`` of the options offered on ``surface``."""
        default = cls()
        return {name: getattr(default, name) for name in cls.names(surface)}


#: ``{name: OptionSpec}`` of every search option, in definition order.
_SPECS = {f.name: f.metadata["spec"] for f in dataclasses.fields(SearchOptions)}


def option_specs() -> dict[str, OptionSpec]:
    """``{name: OptionSpec}`` of every search option, in definition order."""
    return dict(_SPECS)


def option_types() -> dict[str, object]:
    """``{name: type annotation}`` of every search option (resolved: ``int``, ``float | None``, ...)."""
    hints = typing.get_type_hints(SearchOptions)
    return {name: hints[name] for name in _SPECS}


def check_option(name: str, value) -> None:
    """Raise ``UsageError`` (one line naming ``value`` and what is accepted) when ``value`` is not accepted for the
    search option ``name``."""
    _SPECS[name].check(name, value)


def _base_type(annotation) -> type:
    """``int`` for ``int`` or ``int | None`` (the type a command-line value is converted to)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    return annotation


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the CLI's search options to ``parser``: one flag per option offered on ``cli``, with its default and help."""
    defaults, annotations = SearchOptions.defaults("cli"), option_types()
    for name, default in defaults.items():
        spec = option_specs()[name]
        flag = spec.cli_flag or "--" + name.replace("_", "-")
        kind = _base_type(annotations[name])
        if kind is bool:
            state = "on" if default else "off"
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=default,
                                help=f"{spec.help} (default: {state})")
            continue
        shown = f" (default {default})" if default is not None else ""
        parser.add_argument(flag, dest=name, type=kind, default=default, choices=spec.choices, help=spec.help + shown)


def options_from_args(args: argparse.Namespace) -> SearchOptions:
    """The ``SearchOptions`` of parsed CLI arguments (``UsageError`` for a bad value)."""
    return SearchOptions.from_values({name: getattr(args, name) for name in SearchOptions.names("cli")})
