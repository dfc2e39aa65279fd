"""``SearchOptions`` is the one definition of the search options: the Python API, the ``probclip search`` CLI and the
HTTP schema take their names, defaults and help from it, and a bad value gets the same one-line message on each."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest
from fastapi.testclient import TestClient

from probclip.errors import UsageError
from probclip.search import SearchIndex, SearchOptions
from probclip.search.options import HIGHER_IS_BETTER, SCORES, SURFACES, option_specs, options_from_args
from probclip.search.search_cli import build_parser
from probclip.search.search_cli import main as search_main
from probclip.serve import create_app
from probclip.serve.schemas import SearchQuery, SearchRequest

#: Options of one surface only: the service's ``deduplicate``.
SERVICE_ONLY = {"deduplicate"}


@pytest.fixture(scope="module")
def client(tiny_indexes):
    with TestClient(create_app(tiny_indexes), base_url="http://localhost") as test_client:
        yield test_client


def _cli_actions() -> dict[str, argparse.Action]:
    return {action.dest: action for action in build_parser()._actions}


def test_every_option_is_offered_by_the_api_and_surfaces_are_known():
    assert SearchOptions.names("api") == tuple(f.name for f in dataclasses.fields(SearchOptions))
    assert all(set(spec.surfaces) <= set(SURFACES) and "api" in spec.surfaces for spec in option_specs().values())
    assert SearchOptions().score == SCORES[0] and set(HIGHER_IS_BETTER) == set(SCORES)
    with pytest.raises(ValueError, match="surface must be one of"):
        SearchOptions.names("grpc")


def test_the_api_defines_no_option_default_of_its_own():
    params = inspect.signature(SearchIndex.search).parameters
    # k and score stay positional; None means "the SearchOptions default"; every other option is a keyword of
    # SearchOptions (no second list of names and defaults in the signature); query_modality says what an embedding
    # query was encoded from: a property of the query, not an option
    assert [p.default for name, p in params.items() if name in ("k", "score")] == [None, None]
    assert set(params) == {"self", "query", "k", "score", "options", "query_modality", "option_values"}
    assert params["query_modality"].kind is inspect.Parameter.KEYWORD_ONLY and params["query_modality"].default is None
    assert params["option_values"].kind is inspect.Parameter.VAR_KEYWORD


def test_the_cli_flags_defaults_and_help_come_from_search_options():
    actions = _cli_actions()
    cli = SearchOptions.names("cli")
    assert set(cli) == {"k", "score", "max_uncertainty", "uncertainty_quantile", "eps", "directional",
                        "hierarchy_head"}
    for name, default in SearchOptions.defaults("cli").items():
        action = actions[name]
        assert action.default == default, name
        assert option_specs()[name].help in action.help, name
        assert (tuple(action.choices) if action.choices else None) == option_specs()[name].choices, name
    assert set(actions) & set(SearchOptions.names("api")) == set(cli)  # no CLI flag outside the definition
    args = build_parser().parse_args(["c", "--text", "a"])
    assert options_from_args(args) == SearchOptions()
    args = build_parser().parse_args(["c", "--text", "a", "--k", "3", "--score", "included", "--eps", "-10",
                                      "--no-direction-check", "--uncertainty-quantile", "0.5", "--no-hierarchy-head"])
    assert options_from_args(args) == SearchOptions(k=3, score="included", eps=-10.0, directional=False,
                                                    uncertainty_quantile=0.5, hierarchy_head=False)


def test_the_http_schema_is_made_from_search_options():
    fields = SearchRequest.model_fields
    options = set(fields) - set(SearchQuery.model_fields) - SERVICE_ONLY
    assert options == set(SearchOptions.names("http"))
    for name, default in SearchOptions.defaults("http").items():
        assert fields[name].default == default, name
        assert fields[name].description == option_specs()[name].help, name
    schema = SearchRequest.model_json_schema()["properties"]
    assert schema["score"]["enum"] == list(SCORES)
    assert (schema["uncertainty_quantile"]["exclusiveMinimum"], schema["uncertainty_quantile"]["maximum"]) == (0, 1)
    assert SearchRequest.model_validate({"text": "a"}).search_options() == SearchOptions()
    assert SearchRequest.model_validate({"text": "a", "k": "4", "eps": "-20"}).search_options(k=8) == \
        SearchOptions(k=8, eps=-20.0)


def test_search_options_report_the_definition_s_defaults(client):
    served = client.get("/search/options").json()
    assert served["defaults"] == {**SearchOptions.defaults("http"),
                                  **{name: SearchRequest.model_fields[name].default for name in SERVICE_ONLY}}
    assert served["scores"] == list(SCORES) and served["higher_is_better"] == HIGHER_IS_BETTER


def test_api_keywords_and_options_give_the_same_search(tiny_indexes):
    index = tiny_indexes[0]
    by_keywords = index.search("a red circle", 5, "includes", eps=-10.0, directional=False)[0]
    options = SearchOptions(k=5, score="includes", eps=-10.0, directional=False)
    by_options = index.search("a red circle", options=options)[0]
    assert by_keywords.ids.tolist() == by_options.ids.tolist() and len(by_options) == 5
    assert by_keywords.scores.tolist() == by_options.scores.tolist() and by_options.score == "includes"
    # keywords change the options given
    assert len(index.search("a red circle", options=options, k=3)[0]) == 3
    assert index.search("a red circle", options=options, score="mean")[0].score == "mean"
    with pytest.raises(UsageError, match=r"unknown search option 'colour'; accepted: k, score, "):
        index.search("a red circle", colour="red")


@pytest.mark.parametrize(("name", "bad", "flag"), [
    ("k", 0, ["--k", "0"]),
    ("uncertainty_quantile", 2.0, ["--uncertainty-quantile", "2"]),
    ("max_uncertainty", -1.0, ["--max-uncertainty", "-1"]),
    ("eps", float("inf"), ["--eps", "inf"]),
    ("eps", 1000.0, ["--eps", "1000"]),
])
def test_a_bad_value_gets_the_same_message_through_api_cli_and_http(tiny_indexes, tiny_collection, client, capsys,
                                                                    name, bad, flag):
    with pytest.raises(UsageError) as made:
        SearchOptions(**{name: bad})
    message = str(made.value)
    assert "\n" not in message and repr(bad) in message

    with pytest.raises(UsageError) as api:
        tiny_indexes[0].search("a red circle", **{name: bad})
    assert str(api.value) == message

    capsys.readouterr()
    assert search_main([str(tiny_collection), "--text", "a red circle", *flag]) == 2
    assert capsys.readouterr().err == f"probclip search: {message}\n"

    answer = client.post("/search", json={"text": "a red circle", name: bad if bad != float("inf") else "inf"})
    assert answer.status_code == 422
    assert answer.json()["detail"] == f"invalid search request: {message}"
