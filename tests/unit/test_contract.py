"""The search contract: one definition validated alike in Python and over HTTP, its JSON
schema stating its rules, hits round-tripping through their JSON form."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from embedlib.client import _body
from embedlib.exceptions import QueryError
from embedlib.search.query import (
    MAX_K,
    Hit,
    Passage,
    Query,
    SearchOptions,
    TextItem,
    VectorBatch,
    VectorItem,
)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "exactly one of"),
        ({"text": "x", "vector": [1.0]}, "exactly one of"),
        ({"text": "x", "positive": ["a"]}, "exactly one of"),
        ({"text": "  "}, "text: the query text is empty"),
        ({"text": "x", "k": 0}, "k: Input should be greater than or equal to 1"),
        ({"text": "x", "k": MAX_K + 1}, f"less than or equal to {MAX_K}"),
        ({"text": "x", "nprobe": 0}, "nprobe"),
        ({"text": "x", "include": ["colour"]}, "include.0"),
        ({"text": "x", "mode": "bm25"}, "mode"),
        ({"text": "x", "fusion": "max"}, "fusion"),
        ({"text": "x", "alpha": 1.5}, "alpha"),
        ({"text": "x", "extra": 1}, "extra"),
        ({"vector": [1.0, float("nan")]}, "NaN or infinite"),
        ({"vector": []}, "non-empty"),
        ({"positive": [{"text": ""}]}, "positive.0"),
    ],
)
def test_a_bad_query_is_refused_alike_in_python_and_over_http(fields, message):
    with pytest.raises(QueryError, match=message):
        Query(**fields)
    body = {("query" if k == "text" else k): v for k, v in fields.items()}
    with pytest.raises(ValidationError):
        Query.model_validate(body)


def test_queries_accept_what_python_callers_hold():
    q = Query(positive=["king", TextItem("a queen"), np.ones(4)], negative=())
    assert q.negative == [] and isinstance(q.positive[2], VectorItem)
    assert q.positive[2].vector.dtype == np.float32 and q.texts() == ["a queen"]
    assert Query(vector=np.arange(1, 4)).vector.tolist() == [1.0, 2.0, 3.0]
    assert Query(text="x", include=("text",)).fields == frozenset({"text"})
    # empty item lists say nothing (JSON clients send them)
    assert Query.model_validate({"query": "x", "positive": [], "negative": []}).text == "x"


def test_the_json_schema_states_the_rules():
    schema = Query.model_json_schema(by_alias=True)
    assert {"query", "vector", "positive", "negative", "k"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False
    kinds = schema["oneOf"]
    assert [k.get("required") for k in kinds] == [["query"], ["vector"], ["image"], None]
    k = schema["properties"]["k"]
    assert (k["minimum"], k["maximum"]) == (1, MAX_K)
    assert schema["properties"]["mode"]["anyOf"][0]["enum"] == ["dense", "lexical", "hybrid"]
    # the answer's schema comes from the same Hit the searcher returns
    hit = TypeAdapter(Hit).json_schema()
    assert {"id", "score", "text", "passage", "explain"} <= set(hit["properties"])


BIG = 3.5e38  # over float32's largest value
QUERIES = [
    {"query": "x"}, {"query": "x", "vector": None}, {"query": None, "vector": [1.0]},
    {"query": "   "}, {"query": ""}, {}, {"query": "x", "vector": [1.0]},
    {"vector": [1.0], "mode": "lexical"}, {"vector": [1.0], "mode": "dense"},
    {"positive": ["a"], "mode": "hybrid"}, {"query": "x", "mode": "hybrid"},
    {"positive": ["a"]}, {"positive": []}, {"query": "x", "positive": []},
    {"query": "x", "positive": None}, {"negative": [{"vector": [1.0]}]},
    {"positive": ["a"], "negative": [{"text": "b"}]}, {"query": "x", "negative": ["a"]},
    {"vector": []}, {"vector": [BIG]}, {"vector": [-3e38, 3e38]}, {"vector": ["1"]},
    {"positive": [{"vector": [BIG]}]},
    {"image": "AAAA"}, {"image": "AAA"}, {"image": "not base64!"}, {"image": ""},
    {"image": "AAAA", "mode": "lexical"},
    {"query": "x", "filter": {"lang": "en", "year": {"in": [2020, 2021]}}},
    {"query": "x", "filter": {"lang": {"in": []}}}, {"query": "x", "filter": {"lang": ["en"]}},
    {"query": "x", "filter": {"lang": {"like": "e%"}}}, {"query": "x", "filter": {"lang": None}},
    {"query": "x", "filter": {"lang": {"in": [None]}}}, {"query": "x", "filter": {"a": {"in": 3}}},
    {"query": "x", "filter": None}, {"query": "x", "filter": []},
    {"query": "x", "k": 0}, {"query": "x", "k": MAX_K + 1}, {"query": "x", "include": ["id"]},
    {"query": "x", "rrf_k": 0}, {"query": "x", "colour": "red"},
]  # fmt: skip
BATCHES = [
    {"vectors": [[1.0, 2.0]]}, {"vectors": [[1.0]], "encoding_format": "float"},
    {"vectors": "AAAA"}, {"vectors": "AAAA", "encoding_format": "base64"},
    {"vectors": "AA==", "encoding_format": "base64"}, {"vectors": "A", "encoding_format": "base64"},
    {"vectors": "ÀAAA", "encoding_format": "base64"}, {"vectors": [[1.0]], "encoding_format": "base64"},
    {"vectors": []}, {"vectors": [[BIG]]}, {"vectors": [[1.0]], "mode": "lexical"},
    {"vectors": [[1.0]], "mode": "dense"}, {"vectors": [[1.0]], "include": ["text"]},
]  # fmt: skip


def _agree(model: type[BaseModel], bodies: list[dict]) -> list[tuple[dict, bool, bool]]:
    """The bodies on which `model`'s JSON schema and its validation disagree."""
    schema = model.model_json_schema(by_alias=True)
    validator = jsonschema.Draft202012Validator(schema)
    disagree = []
    for body in bodies:
        try:
            model.model_validate(body)
            accepted = True
        except (ValidationError, QueryError):
            accepted = False
        if validator.is_valid(body) != accepted:
            disagree.append((body, validator.is_valid(body), accepted))
    return disagree


def test_the_json_schema_accepts_exactly_what_validation_accepts():
    """The OpenAPI document states the rules validation enforces (a client generated from
    it, or schemathesis, sends no request the server refuses for a rule it was not told):
    one kind of query, a field sent as null is not given, lexical ranking for text only,
    vectors float32 can hold, base64 images and vectors, the filter's shape."""
    assert _agree(Query, QUERIES) == []
    assert _agree(VectorBatch, BATCHES) == []
    accepted = sum(jsonschema.Draft202012Validator(Query.model_json_schema(by_alias=True))
                   .is_valid(b) for b in QUERIES)  # fmt: skip
    assert 10 < accepted < len(QUERIES) - 10  # the cases hold both kinds


def test_a_query_is_sent_as_the_server_reads_it():
    q = Query(text="cheap shoes", k=3, filter={"lang": "en"}, positive=[])
    body = _body(q)
    assert body == {"query": "cheap shoes", "k": 3, "filter": {"lang": "en"}}
    assert Query.model_validate(json.loads(json.dumps(body))) == q
    arithmetic = _body(Query(positive=["a", TextItem("b"), [0.5, 0.5]], k=1))
    assert arithmetic["positive"] == ["a", {"text": "b"}, {"vector": [0.5, 0.5]}]
    batch = _body(VectorBatch(vectors="AAAA", encoding_format="base64", k=2))
    assert batch == {"vectors": "AAAA", "encoding_format": "base64", "k": 2}
    with pytest.raises(QueryError, match="base64"):
        VectorBatch(vectors="AAAA")


def test_hits_round_trip_through_their_json_form():
    hit = Hit(
        "d1",
        0.5,
        text="t",
        metadata={"lang": "en"},
        passage=Passage("chunk", 3, 8, 1),
        passages=[Passage("chunk", 3, 8, 1), Passage(None, 9, 12, 2)],
        explain={"dense": {"rank": 1, "score": 0.5}, "lexical": None},
    )
    assert Hit.from_json(json.loads(json.dumps(hit.to_json()))) == hit
    assert Hit("d2", 1.0).to_json() == {"id": "d2", "score": 1.0}  # absent fields left out


def test_search_options_are_the_query_fields_without_a_query():
    assert set(SearchOptions.model_fields) < set(Query.model_fields)
    assert set(Query.model_fields) - set(SearchOptions.model_fields) == {
        "text",
        "vector",
        "positive",
        "negative",
        "image",
    }


def test_excluded_ids_and_text_items_count_against_the_caps():
    """A batch of 2,000 vectors each leaving out 5,000 ids (it answered after 17 s and
    grew the server by 761 MB) and text items beyond what one query may embed are
    refused before any work; what a normal query asks stays allowed."""
    from pydantic import ValidationError

    from embedlib.exceptions import QueryError
    from embedlib.search.query import MAX_TEXT_ITEMS, Query, TextItem
    from embedlib.serve.schemas import BatchSearchRequest, VectorBatchRequest

    excluded = [f"d{i}" for i in range(5000)]
    with pytest.raises((ValidationError, QueryError), match="excluded ids"):
        VectorBatchRequest(vectors=[[0.1, 0.2]] * 2000, k=10, exclude=excluded)
    VectorBatchRequest(vectors=[[0.1, 0.2]] * 50, k=10, exclude=excluded)  # 250k: allowed
    with pytest.raises(QueryError, match="text items"):
        Query(positive=[TextItem(f"word {i}") for i in range(MAX_TEXT_ITEMS + 1)])
    with pytest.raises(QueryError, match="characters"):
        Query(positive=[TextItem("x" * 20_000) for _ in range(6)])
    assert Query(text="q", k=1000, exclude=excluded * 2, passages=20).work == 220_000  # the most
    many = [Query(text="y" * 19_000) for _ in range(120)]
    with pytest.raises((ValidationError, QueryError), match="characters to embed"):
        BatchSearchRequest(queries=many)
    BatchSearchRequest(queries=many[:100])
