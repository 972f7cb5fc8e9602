"""Serving end to end over real HTTP against a running Serve app."""

from __future__ import annotations

import base64
import json
import posixpath
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from embedlib import Client, EmbedOptions, Query, RunOptions, embed_corpus
from embedlib.exceptions import ClientError
from embedlib.index import ShardedIndex, build_index
from tests.ports import free_port

pytestmark = pytest.mark.usefixtures("ray_cluster")
PORT = free_port()  # the session's Serve HTTP port
KEY = "test-key"
LOCAL = RunOptions(runner="local", progress=False)
DOCS = [
    ("0", "cat video", "en", 2020),
    ("1", "machine learning tutorial", "en", 2021),
    ("2", "buy cheap shoes", "en", 2020),
    ("3", "deep learning course notes", "de", 2021),
    ("4", "training neural networks from scratch", "fr", 2022),
    ("5", "a recipe for sourdough bread", "en", 2022),
    ("6", "kitten plays with a ball of yarn", "de", 2020),
]


def _request(path: str, body=None, *, key: str | None = KEY, raw: bytes | None = None, method=None):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(
        f"http://127.0.0.1:{PORT}{path}", data=data, headers=headers, method=method
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            text = r.read()
            return r.status, (
                json.loads(text)
                if r.headers.get_content_type() == "application/json"
                else text.decode()
            )
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:  # not ours: a proxy's plain-text error
            return e.code, raw.decode(errors="replace")


def _metric(prefix: str, name: str, at_least: float, **labels: str) -> float:
    """The sum of the /metrics samples `ray_embedlib_<name>` whose labels include
    `labels`, once it reaches `at_least` (Ray exports each replica's metrics every few
    seconds) or after 60 s."""
    deadline, total = time.monotonic() + 60, 0.0
    while True:
        status, text = _request(f"{prefix}/metrics")
        assert status == 200
        total = sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == f"ray_embedlib_{name}" and labels.items() <= s.labels.items()
        )
        if total >= at_least or time.monotonic() > deadline:
            return total
        time.sleep(1)


class _QueryLoop:
    """A thread's loop: search until `done` is set, counting the answers and noting every
    failure: a status other than 200, or a request that got no answer at all (refused,
    reset, timed out: urllib raises an OSError)."""

    def __init__(self, done: threading.Event, prefix: str = "") -> None:
        self.done, self.prefix = done, prefix
        self.answered = 0
        self.failures: list[object] = []
        self._lock = threading.Lock()

    def __call__(self) -> None:
        while not self.done.is_set():
            try:
                status, _ = _request(f"{self.prefix}/v1/search", {"query": "cheap shoes", "k": 2})
                failed: object = None if status == 200 else status
            except OSError as e:
                failed = f"{type(e).__name__}: {e}"
            with self._lock:
                if failed is None:
                    self.answered += 1
                else:
                    self.failures.append(failed)

    def check(self, at_least: int) -> None:
        """Every request answered 200, and enough were made for that to mean something."""
        assert self.failures == [], self.failures[:5]
        assert self.answered >= at_least, f"only {self.answered} requests were answered"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The small corpus embedded, indexed (2 shards) and served with an API key in the
    default placement (the gateway searches the shards and encodes the queries)."""
    from ray import serve

    from embedlib.serve.app import build_app

    root = tmp_path_factory.mktemp("serve")
    (root / "docs.jsonl").write_text(
        "".join(
            json.dumps({"id": i, "text": t, "lang": lang, "year": y}) + "\n"
            for i, t, lang, y in DOCS
        )
    )
    embed_corpus(str(root / "docs.jsonl"), str(root / "emb"), options=EmbedOptions(), run=LOCAL)
    build_index(
        str(root / "emb"),
        str(root / "idx"),
        run=LOCAL,
        options=__import__("embedlib").index.IndexOptions(shards=2),
    )
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    serve.run(
        build_app(str(root / "idx"), api_key=KEY, searcher_cpus=0.1, encoder_cpus=0.2),
        name="embedlib",
        route_prefix="/",
    )
    yield root / "idx"
    serve.shutdown()


def test_classic_example_and_equality_with_the_library(served):
    status, body = _request(
        "/v1/search",
        {"query": "how to train a neural net", "k": 3, "include": ["text", "metadata"]},
    )
    assert status == 200, body
    assert body["results"][0]["text"] in (
        "machine learning tutorial",
        "training neural networks from scratch",
    )
    assert body["metric"] == "cosine" and body["timing_ms"]["total"] > 0
    index = ShardedIndex(str(served))
    local = index.search_text(["how to train a neural net"], 3)[0]
    assert [r["id"] for r in body["results"]] == [h.id for h in local]
    assert np.allclose([r["score"] for r in body["results"]], [h.score for h in local], atol=1e-5)
    assert body["results"][0]["metadata"]["lang"] in ("en", "fr")
    status, body = _request(
        "/v1/search", {"vector": index.vector("2").tolist(), "k": 1, "include": ["vector"]}
    )
    assert (
        status == 200
        and body["results"][0]["id"] == "2"
        and len(body["results"][0]["vector"]) == 384
    )
    status, body = _request(
        "/v1/search/batch", {"queries": [{"query": "cats"}, {"query": "shoes", "k": 1}]}
    )
    assert status == 200 and len(body["results"]) == 2 and body["results"][1][0]["id"] == "2"


def _same(http_rows: list[dict], hits: list, docs: bool = False) -> bool:
    """An HTTP answer and the library's hits: same ids, scores within 1e-5 (and the same
    text and metadata when asked)."""
    if [r["id"] for r in http_rows] != [h.id for h in hits]:
        return False
    if not np.allclose([r["score"] for r in http_rows], [h.score for h in hits], atol=1e-5):
        return False
    if any(r.get("explain") != h.explain for r, h in zip(http_rows, hits, strict=True)):
        return False
    return not docs or all(
        (r.get("text"), r.get("metadata") or {}) == (h.text, h.metadata or {})
        for r, h in zip(http_rows, hits, strict=True)
    )


def _library_answers(index: ShardedIndex, bodies: list[dict]) -> list[list]:
    """The library's answer to each /v1/search body, through its own facade methods."""
    answers = []
    for b in bodies:
        kw = {k: b[k] for k in ("filter", "include", "exclude", "mode", "alpha", "explain")
              if k in b}  # fmt: skip
        if "query" in b:
            answers.append(index.search_text([b["query"]], b["k"], **kw)[0])
        elif "vector" in b:
            answers.append(index.search(np.array([b["vector"]]), b["k"], **kw)[0])
        else:
            answers.append(index.most_similar(b["positive"], b.get("negative", []), b["k"], **kw))
    return answers


QUERY_PATH_CASES = [
    {"query": "learning about neural networks", "k": 4, "filter": {"lang": "en"}},
    {"query": "learning about neural networks", "k": 4, "filter": {"year": {"in": [2020, 2022]}}},
    {"query": "pets", "k": 3, "include": ["text"], "exclude": ["6"]},
    {"query": "bread", "k": 7, "include": []},
    {"query": "baking bread", "k": 3, "mode": "lexical", "filter": {"lang": "en"}},
    {"query": "neural networks", "k": 4, "mode": "hybrid", "alpha": 0.3, "explain": True},
    {"query": "neural networks", "k": 4, "mode": "dense"},
    {"positive": ["1", "4"], "negative": ["2"], "k": 3},
    {"positive": ["0"], "k": 2, "filter": {"lang": "de"}},
]


def test_every_query_kind_answers_alike_through_the_library_and_http(served):
    """The one query path: text, vectors, arithmetic by id, filters, include, exclude,
    and both batch forms give the library's ids and scores (1e-5) over HTTP, and through
    the Python client given the same typed Query."""
    index = ShardedIndex(str(served))
    kittens = index.encode_text(["kittens"])[0].tolist()
    bodies = [*QUERY_PATH_CASES, {"vector": kittens, "k": 5, "filter": {"lang": "de"}}]
    client = Client(f"http://127.0.0.1:{PORT}", api_key=KEY)
    for body, hits in zip(bodies, _library_answers(index, bodies), strict=True):
        status, answer = _request("/v1/search", body)
        assert status == 200, (body, answer)
        assert _same(answer["results"], hits, docs=True), (body, answer["results"], hits)
        through_client = client.search(Query.model_validate(body))  # the same typed Query
        assert _same([h.to_json() for h in through_client], hits, docs=True), body
    status, answer = _request("/v1/search/batch", {"queries": bodies})
    assert status == 200 and len(answer["results"]) == len(bodies)
    for rows, hits in zip(answer["results"], _library_answers(index, bodies), strict=True):
        assert _same(rows, hits, docs=True)
    vectors = index.encode_text(["kittens", "learning", "shoes"])
    status, answer = _request(
        "/v1/search/batch", {"vectors": vectors.tolist(), "k": 3, "filter": {"year": 2020}}
    )
    local = index.search(vectors, 3, filter={"year": 2020}, include=())
    assert status == 200 and all(
        _same(rows, hits) for rows, hits in zip(answer["results"], local, strict=True)
    )


def test_the_openapi_document_declares_every_body(served):
    """/openapi.json (behind the key) declares each POST route's JSON body and answers;
    no Swagger UI is served (it would load its script from a CDN)."""
    assert _request("/openapi.json", key=None)[0] == 401
    status, spec = _request("/openapi.json")
    assert status == 200
    posts = {p: ops["post"] for p, ops in spec["paths"].items() if "post" in ops}
    assert {"/v1/search", "/v1/search/batch", "/v1/embeddings", "/v1/upsert"} <= set(posts)
    for path, op in posts.items():
        body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
        assert "schema" in body, f"{path} declares no JSON body"
        assert "200" in op["responses"] or "202" in op["responses"], path
        assert "422" in op["responses"], path
    search = spec["components"]["schemas"]["Query"]["properties"]
    assert {"query", "vector", "positive", "negative", "k", "filter", "include", "exclude"} <= set(
        search
    )
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert _request("/docs")[0] == 404


def test_filtered_search_equals_exact_search_over_the_matching_rows(served):
    index = ShardedIndex(str(served))
    query = index.encode_text(["learning about neural networks"])[0]
    for flt, rows in (
        ({"lang": "de"}, {"3", "6"}),
        ({"year": {"in": [2020, 2022]}, "lang": "en"}, {"0", "2", "5"}),
    ):
        status, body = _request("/v1/search", {"vector": query.tolist(), "k": 10, "filter": flt})
        assert status == 200, body
        vectors = {i: index.vector(i) for i in rows}
        want = sorted(rows, key=lambda i: -float(vectors[i] @ query))
        assert [r["id"] for r in body["results"]] == want


def test_vector_arithmetic_excludes_its_inputs(served):
    status, body = _request(
        "/v1/search",
        {"positive": ["1", {"text": "kittens"}], "negative": [{"text": "study"}], "k": 3},
    )
    assert status == 200 and "1" not in [r["id"] for r in body["results"]]


def test_vector_batch_in_base64_equals_float_rows_and_the_library(served):
    """One search for many vectors: base64 float32, rows of floats and the library agree."""
    index = ShardedIndex(str(served))
    queries = index.encode_text(["kittens", "learning", "bread", "shoes"])
    packed = base64.b64encode(queries.astype("<f4").tobytes()).decode()
    answers = []
    for body in (
        {"vectors": packed, "encoding_format": "base64", "k": 3, "include": ["text"]},
        {"vectors": queries.tolist(), "k": 3, "include": ["text"]},
    ):
        status, answer = _request("/v1/search/batch", body)
        assert status == 200, answer
        answers.append(answer["results"])
    local = index.search(queries, 3)
    want = [[h.id for h in hits] for hits in local]
    for results in answers:
        assert [[r["id"] for r in rows] for rows in results] == want
        assert np.allclose(
            [[r["score"] for r in rows] for rows in results],
            [[h.score for h in hits] for hits in local],
            atol=1e-5,
        )
        assert results[2][0]["text"] == "a recipe for sourdough bread"
    status, answer = _request(
        "/v1/search/batch",
        {"vectors": packed, "encoding_format": "base64", "k": 10, "filter": {"lang": "de"}},
    )
    assert status == 200 and all(
        {r["id"] for r in rows} == {"3", "6"} for rows in answer["results"]
    )
    nan = base64.b64encode(np.full((1, 384), np.nan, "<f4").tobytes()).decode()
    for body, status in (
        ({"vectors": packed[:-8], "encoding_format": "base64"}, 422),  # not whole rows
        ({"vectors": "not base64!", "encoding_format": "base64"}, 422),
        ({"vectors": "\u00c0AAA", "encoding_format": "base64"}, 422),  # not ASCII: was a 500
        ({"vectors": nan, "encoding_format": "base64"}, 422),
        ({"vectors": packed}, 422),  # a string needs encoding_format base64
        ({"vectors": [[0.1, 0.2]]}, 422),  # wrong dimension
        ({"vectors": packed, "encoding_format": "base64", "bogus": 1}, 422),
    ):
        got, answer = _request("/v1/search/batch", body)
        assert got == status and answer["error"]["message"], (body, answer)


@pytest.mark.parametrize(
    ("body", "raw", "status"),
    [
        (None, b"{not json", 400),
        ({"query": "x", "k": 0}, None, 422),
        ({"query": "x", "k": 1001}, None, 422),
        ({"vector": [0.1, 0.2]}, None, 422),
        (None, b'{"vector": [NaN, 1.0]}', 400),  # NaN and 1e999 are not JSON numbers
        (None, b'{"vector": [1e999, 1.0]}', 400),
        ({"query": ""}, None, 422),
        ({"k": 3}, None, 422),
        ({"query": "x", "vector": [1.0]}, None, 422),
        ({"positive": ["no-such-id"]}, None, 422),
        ({"query": "x", "bogus": 1}, None, 422),
        ({"query": "x", "filter": {"colour": "red"}}, None, 422),
        ({"query": "x", "filter": {"lang": {"like": "e%"}}}, None, 422),
        ({"vector": [3.5e38] * 384}, None, 422),  # over float32's range
        ({"positive": ["0"], "mode": "lexical"}, None, 422),  # lexical ranks text only
    ],
)
def test_bad_requests_get_json_errors(served, body, raw, status):
    got, answer = _request("/v1/search", body, raw=raw)
    assert got == status, answer
    assert set(answer) == {"error"} and {"code", "message"} <= set(answer["error"])


def test_costly_requests_are_refused_naming_the_cap(served):
    """Every request's cost is bounded: over a cap, a 422 naming the cap and the value
    sent, fast; nprobe beyond the list count is clamped, not an error."""
    from embedlib.search.query import MAX_FILTER_VALUES, MAX_ITEMS
    from embedlib.serve.schemas import MAX_HITS, MAX_VECTOR_HITS

    v = ShardedIndex(str(served)).vector("2").tolist()
    many = base64.b64encode(np.tile(np.asarray(v, "<f4"), (200, 1)).tobytes()).decode()
    cases = [
        ("/v1/search/batch", {"queries": [{"vector": v, "k": 1000}] * 101}, f"{MAX_HITS}"),
        ("/v1/search/batch", {"queries": [{"vector": v, "k": 1000, "include": ["vector"]}] * 11},
         f"{MAX_VECTOR_HITS}"),
        ("/v1/search/batch", {"vectors": many, "encoding_format": "base64", "k": 1000,
                              "include": ["vector"]}, "200000 hits"),
        ("/v1/search", {"vector": v, "ef_search": 2**31}, "4096"),
        ("/v1/search", {"positive": [str(i) for i in range(MAX_ITEMS + 1)]}, f"{MAX_ITEMS}"),
        ("/v1/search", {"vector": v, "filter": {"year": {"in": list(range(MAX_FILTER_VALUES + 1))}}},
         f"{MAX_FILTER_VALUES}"),
        ("/v1/search", {"query": "x" * 20_001}, "20000"),
        ("/v1/embeddings", {"input": ["x" * 1_000_000] * 3}, "2000000"),
    ]  # fmt: skip
    for path, body, cap in cases:
        start = time.perf_counter()
        status, answer = _request(path, body)
        assert status == 422 and cap in answer["error"]["message"], (path, answer)
        assert time.perf_counter() - start < 5
    status, answer = _request("/v1/search", {"vector": v, "k": 3, "nprobe": 2**40})
    assert status == 200 and answer["results"][0]["id"] == "2"


def test_api_key_health_readiness_info_and_metrics(served):
    assert _request("/v1/search", {"query": "cats"}, key=None)[0] == 401
    assert _request("/v1/search", {"query": "cats"}, key="wrong")[0] == 401
    assert _request("/healthz", key=None)[0] == 200
    assert _request("/readyz", key=None) == (200, {"ready": True})
    status, info = _request("/v1/indexes")
    assert (
        status == 200
        and info["indexes"][0]["ntotal"] == len(DOCS)
        and info["indexes"][0]["shards"] == 2
        and info["indexes"][0]["lexical"] == "english"
    )
    assert info["indexes"][0]["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert _request("/v1/search", raw=b"x" * (17 * 1024 * 1024))[0] == 413
    assert _metric("", "requests_total", 1, route="/v1/search", collection="idx", status="401")


def test_openai_client_gets_the_models_embeddings(served):
    from openai import NotFoundError, OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{PORT}/v1", api_key=KEY)
    result = client.embeddings.create(
        model="all-MiniLM-L6-v2", input=["cat video", "buy cheap shoes"]
    )
    assert [d.index for d in result.data] == [0, 1] and result.usage.total_tokens > 0
    vectors = np.array([d.embedding for d in result.data])
    index = ShardedIndex(str(served))
    assert np.allclose(vectors, index.encode_text(["cat video", "buy cheap shoes"]), atol=1e-5)
    # the client asks for base64 by itself and decodes it; asked for explicitly, it does not
    b64 = client.embeddings.create(
        model="all-MiniLM-L6-v2", input="cat video", encoding_format="base64"
    )
    decoded = np.frombuffer(base64.b64decode(b64.data[0].embedding), dtype="<f4")
    assert np.allclose(decoded, vectors[0], atol=1e-6)
    floats = client.embeddings.create(
        model="all-MiniLM-L6-v2", input="cat video", encoding_format="float"
    )
    assert np.allclose(floats.data[0].embedding, vectors[0], atol=1e-6)
    with pytest.raises(NotFoundError, match="all-MiniLM-L6-v2"):
        client.embeddings.create(model="text-embedding-3-small", input="x")


def test_queries_keep_succeeding_while_a_searcher_replica_dies(served):
    """Placement "grouped": the gateway retries a searcher replica that died mid-call."""
    import ray
    from ray import serve

    from embedlib.serve.app import build_app

    serve.run(
        build_app(str(served), api_key=KEY, replicas=2, placement="grouped",
                  searcher_cpus=0.1, encoder_cpus=0.1),
        name="grouped", route_prefix="/grouped",
    )  # fmt: skip
    try:
        names = [
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if "ShardSearcher" in a["name"]
        ]
        assert len(names) == 2, names
        done = threading.Event()
        query_loop = _QueryLoop(done, prefix="/grouped")
        threads = [threading.Thread(target=query_loop) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
        time.sleep(4.0)
        done.set()
        for t in threads:
            t.join()
        query_loop.check(at_least=10)
        answer = _request("/grouped/v1/search", {"query": "cheap shoes", "k": 1})[1]
        assert answer["results"][0]["id"] == "2"
        _assert_answers_like_the_library(served, "/grouped")
    finally:
        serve.delete("grouped")


def _assert_answers_like_the_library(served, prefix: str) -> None:
    index = ShardedIndex(str(served))
    for body, hits in zip(QUERY_PATH_CASES, _library_answers(index, QUERY_PATH_CASES), strict=True):
        status, answer = _request(f"{prefix}/v1/search", body)
        assert status == 200 and _same(answer["results"], hits, docs=True), (prefix, body, answer)


def test_the_per_shard_placement_answers_like_the_library(served):
    """Shard searcher replicas (one per shard) and an encoder replica behind the
    gateway: the same query path, the same answers."""
    from ray import serve

    from embedlib.serve.app import build_app

    serve.run(
        build_app(str(served), api_key=KEY, placement="per-shard", searcher_cpus=0.1,
                  encoder_cpus=0.1),
        name="pershard", route_prefix="/pershard",
    )  # fmt: skip
    try:
        _assert_answers_like_the_library(served, "/pershard")
        status, body = _request("/pershard/v1/embeddings", {"input": "cat video"})
        assert status == 200 and len(body["data"][0]["embedding"]) == 384
    finally:
        serve.delete("pershard")


def test_an_index_without_a_text_model_refuses_text_queries(tmp_path):
    from embedlib import NoTextModelError

    np.save(tmp_path / "v.npy", np.eye(4, dtype=np.float32))
    build_index(str(tmp_path / "v.npy"), str(tmp_path / "idx"), run=LOCAL)
    index = ShardedIndex(str(tmp_path / "idx"))
    with pytest.raises(NoTextModelError, match="without a text model"):
        index.search_text(["x"])
    assert [h.id for h in index.search(np.eye(4, dtype=np.float32)[:1], 1)[0]] == ["0"]


def test_glove_arithmetic_and_analogies_over_http(served, tmp_path):
    """Imported static word vectors, indexed and served: king - man + woman -> queen, no
    text queries, and analogy answers over HTTP equal to the library's on the same index."""
    from gensim.test.utils import datapath
    from ray import serve

    from embedlib.serve.app import build_app
    from embedlib.uses.word_vectors import (
        PACKAGED_GLOVE,
        evaluate_analogies,
        import_word_vectors,
        read_analogies,
    )

    import_word_vectors(PACKAGED_GLOVE, str(tmp_path / "glove"), limit=50_000)
    build_index(str(tmp_path / "glove"), str(tmp_path / "gidx"), run=LOCAL)
    serve.run(
        build_app(str(tmp_path / "gidx"), api_key=KEY, searcher_cpus=0.1),
        name="glove",
        route_prefix="/glove",
    )
    try:
        status, body = _request(
            "/glove/v1/search", {"positive": ["king", "woman"], "negative": ["man"], "k": 3}
        )
        assert status == 200, body
        assert body["results"][0]["id"] == "queen"
        assert {"king", "woman", "man"}.isdisjoint(r["id"] for r in body["results"])
        status, body = _request("/glove/v1/search", {"query": "royalty"})
        assert status == 400 and body["error"]["code"] == "no_text_model"
        status, body = _request("/glove/v1/search", {"query": "royalty", "mode": "lexical"})
        assert status == 422 and body["error"]["code"] == "no_lexical_index", body
        assert "--lexical" in body["error"]["message"]
        status, body = _request(
            "/glove/v1/search", {"positive": ["king"], "mode": "lexical", "k": 1}
        )
        assert status == 422 and "needs a text query" in body["error"]["message"], body
        questions = read_analogies(datapath("questions-words.txt"))[:300]
        report = evaluate_analogies(
            questions, str(tmp_path / "gidx"), url=f"http://127.0.0.1:{PORT}/glove",
            api_key=KEY, exact=False,
        )  # fmt: skip
        served, local = report.scores["served"], report.scores["index"]
        assert served.correct == local.correct and local.answered > 200
    finally:
        serve.delete("glove")


def test_recommend_over_http_equals_the_library(served, tmp_path):
    """A recommender's item index served with --recommender: POST /v1/recommend answers
    like `Recommender.recommend`, an unknown user gets popular items and is told, a k
    over the item count is 422; a server without a recommender says how to get one."""
    from ray import serve

    from embedlib.serve.app import build_app
    from embedlib.uses.recommend import Recommender, planted_interactions, train_recommender

    table, _, _ = planted_interactions(users=200, items=120, seed=2)
    pq.write_table(table, tmp_path / "i.parquet")
    rec = str(tmp_path / "rec")
    train_recommender(str(tmp_path / "i.parquet"), rec, factors=8, run=LOCAL)
    serve.run(
        build_app(f"{rec}/index", api_key=KEY, searcher_cpus=0.1, recommender=rec),
        name="rec",
        route_prefix="/rec",
    )
    try:
        library = Recommender(rec)
        for user in ("u0", "u42"):
            status, body = _request("/rec/v1/recommend", {"user": user, "k": 7})
            assert status == 200, body
            expected = library.recommend(user, k=7)["results"]
            assert [r["id"] for r in body["results"]] == [r["id"] for r in expected]
            assert body["fallback"] is None
        status, body = _request("/rec/v1/recommend", {"user": "newcomer", "k": 3})
        assert status == 200 and body["fallback"] == "popular" and "newcomer" in body["reason"]
        assert body["results"] == library.popular_answer("newcomer", 3)["results"]
        status, body = _request("/rec/v1/recommend", {"user": "u0", "k": 121})
        assert status == 422 and "item count" in body["error"]["message"]
        status, body = _request("/rec/v1/recommend", {"user": "u0"}, key=None)
        assert status == 401
    finally:
        serve.delete("rec")
    status, body = _request("/v1/recommend", {"user": "u0"})
    assert status == 404 and "--recommender" in body["error"]["message"]


def test_upsert_and_delete_over_http_switch_versions_without_dropping_queries(served, tmp_path):
    """POST /v1/upsert and /v1/delete go through the versioned update path: each
    publishes a version, the app switches to it, queries keep succeeding throughout, and
    after the switch the answers reflect the change."""
    from ray import serve

    from embedlib.serve.app import build_app

    (tmp_path / "docs.jsonl").write_text(
        "".join(json.dumps({"id": i, "text": t, "lang": lang}) + "\n" for i, t, lang, _ in DOCS)
    )
    embed_corpus(str(tmp_path / "docs.jsonl"), str(tmp_path / "emb"), run=LOCAL)
    build_index(str(tmp_path / "emb"), str(tmp_path / "idx"), run=LOCAL)
    serve.run(
        build_app(str(tmp_path / "idx"), api_key=KEY, searcher_cpus=0.1, app_name="upd",
                  route_prefix="/upd"),
        name="upd",
        route_prefix="/upd",
    )  # fmt: skip

    def switched_to(version: str) -> bool:
        deadline = time.time() + 90
        while time.time() < deadline:
            status, body = _request("/upd/v1/indexes")
            if status == 200 and body["indexes"][0]["version"] == version:
                return True
            time.sleep(0.5)
        return False

    def finished(write_id: str, timeout_s: float = 120) -> dict:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            status, body = _request(f"/upd/v1/writes/{write_id}")
            if status == 503 and body["error"]["code"] == "keeper_unavailable":
                continue  # a killed keeper restarting: asked again, as the answer says
            assert status == 200, body
            if body["status"] in ("done", "failed"):
                return body
            time.sleep(0.3)
        raise AssertionError(f"write {write_id} did not finish")

    done = threading.Event()
    query_loop = _QueryLoop(done, "/upd")
    thread = threading.Thread(target=query_loop)
    thread.start()
    try:
        # metadata may not overwrite the row's own columns (types: test_update.py)
        for bad in ({"id": "2"}, {"_iid": 3}, {"text": "other"}, {"chunk": 1}):
            doc = {"id": "9", "text": "volcanoes", "metadata": bad}
            status, body = _request("/upd/v1/upsert", {"documents": [doc]})
            assert status == 422 and next(iter(bad)) in body["error"]["message"], (bad, body)
        mixed = [{"id": "9", "text": "a", "metadata": {"shelf": 1}},  # one new key, two types
                 {"id": "10", "text": "b", "metadata": {"shelf": "top"}}]  # fmt: skip
        status, body = _request("/upd/v1/upsert", {"documents": mixed})
        assert status == 422 and body["error"]["code"] == "metadata_type", body
        status, body = _request("/upd/v1/upsert", {"documents": [
            {"id": "9", "text": "a", "metadata": {"shelf": 2**63}}]})  # fmt: skip
        assert status == 422 and "64-bit" in body["error"]["message"], body
        new = {"id": "9", "text": "volcanoes erupt with lava and ash", "metadata": {"lang": "en"}}
        status, body = _request("/upd/v1/upsert", {"documents": [new]})
        assert status == 202 and body["status"] in ("queued", "running"), body
        assert body["status_url"] == f"/v1/writes/{body['write_id']}"
        record = finished(body["write_id"])
        assert (record["status"], record["added"], record["version"]) == ("done", 1, "v-00002")
        assert record["switched"] and switched_to("v-00002")
        status, body = _request("/upd/v1/search", {"query": "lava from a volcano", "k": 1})
        assert body["results"][0]["id"] == "9" and body["results"][0]["metadata"] == {"lang": "en"}
        # two writes at once, their clients gone: both applied in turn, the newest served
        first = _request("/upd/v1/delete", {"ids": ["9", "2"]})[1]["write_id"]
        relabel = {**new, "id": "5", "text": DOCS[5][1], "metadata": {"lang": "it"}}
        second = _request("/upd/v1/upsert", {"documents": [relabel]})[1]["write_id"]
        assert finished(first)["deleted"] == 2
        record = Client(f"http://127.0.0.1:{PORT}/upd", KEY).wait_for_write(second, 120)
        assert (record["changed"], record["version"]) == (1, "v-00004")  # metadata only
        assert switched_to("v-00004")
        status, body = _request("/upd/v1/search", {"query": "lava from a volcano", "k": 10})
        assert {"9", "2"}.isdisjoint(r["id"] for r in body["results"])
        status, body = _request("/upd/v1/search", {"query": "bread", "k": 1,
                                                   "filter": {"lang": "it"}})  # fmt: skip
        assert [r["id"] for r in body["results"]] == ["5"]
        with pytest.raises(ClientError, match="not in the index") as failed:
            Client(f"http://127.0.0.1:{PORT}/upd", KEY).delete(["nope"], wait_s=120)
        assert failed.value.code == "invalid_update"
        assert _request("/upd/v1/writes/unknown")[0] == 404
        status, body = _request("/upd/v1/upsert", {"documents": [new]}, key=None)
        assert status == 401
        from embedlib.serve.config import AppOptions
        from embedlib.serve.writes import keeper_name

        keeper = keeper_name(AppOptions(index=str(tmp_path / "idx"), app_name="upd"))
        assert _metric("/upd", "version_events_total", 1, keeper=keeper, event="write_failed") == 1
        assert _metric("/upd", "version_events_total", 3, keeper=keeper, event="switched") == 3
        # the keeper dies between a publish and its switch: Ray restarts it, and its first
        # call moves the app forward to CURRENT (writes and status answered 500 for good)
        import ray

        build_index(str(tmp_path / "emb"), str(tmp_path / "idx"), run=LOCAL)  # v-00005
        ray.kill(ray.get_actor(keeper, namespace="embedlib"), no_restart=False)
        deadline, seen = time.time() + 60, []
        while (answer := _request("/upd/v1/writes/unknown"))[0] != 404 and time.time() < deadline:
            seen.append(answer)
            time.sleep(0.5)
        assert _request("/upd/v1/writes/unknown")[0] == 404, seen[-3:]
        assert switched_to("v-00005")
        # a write accepted, then its keeper killed before it finished (its writes used to
        # vanish): recorded under the index before the 202, it runs again in the
        # restarted keeper under the same id
        ice = {"id": "11", "text": "glaciers carve valleys out of ice", "metadata": {"lang": "en"}}
        status, body = _request("/upd/v1/upsert", {"documents": [ice]})
        journal = tmp_path / "idx" / "_writes" / keeper / f"{body['write_id']}.json"
        assert status == 202 and journal.exists(), body
        ray.kill(ray.get_actor(keeper, namespace="embedlib"), no_restart=False)
        record = finished(body["write_id"], timeout_s=400)  # a killed writer's lock goes stale
        assert record["status"] == "done" and record["resumed"], record
        assert not journal.exists() and switched_to(record["version"])
        status, body = _request("/upd/v1/search", {"query": "ice carving valleys", "k": 1})
        assert body["results"][0]["id"] == "11", body
    finally:
        done.set()
        thread.join()
        serve.delete("upd")
    query_loop.check(at_least=10)


def test_a_keyless_server_refuses_writes_and_hides_internal_errors(served, tmp_path):
    """Without a server key, write and admin routes are 403; a body not sent as JSON is a
    415; a version damaged under the server (a docs table removed) answers 500 with an
    error id only, never the exception's text or a path."""
    from ray import serve

    from embedlib.serve.app import build_app

    (tmp_path / "docs.jsonl").write_text(
        "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t, _, _ in DOCS)
    )
    embed_corpus(str(tmp_path / "docs.jsonl"), str(tmp_path / "emb"), run=LOCAL)
    build_index(str(tmp_path / "emb"), str(tmp_path / "idx"), run=LOCAL)
    serve.run(build_app(str(tmp_path / "idx"), searcher_cpus=0.1, app_name="nokey",
                        route_prefix="/nokey"), name="nokey", route_prefix="/nokey")  # fmt: skip
    try:
        doc = {"id": "9", "text": "lava", "metadata": {}}
        for path, body in (("/v1/upsert", {"documents": [doc]}), ("/v1/delete", {"ids": ["1"]}),
                           ("/v1/admin/reload", {}), ("/v1/writes/x", None)):  # fmt: skip
            status, answer = _request("/nokey" + path, body, key=None)
            assert status == 403 and answer["error"]["code"] == "key_required", (path, answer)
        req = urllib.request.Request(
            f"http://127.0.0.1:{PORT}/nokey/v1/search", data=b'{"query": "shoes"}',
            headers={"Content-Type": "text/plain"},
        )  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=30)
        assert refused.value.code == 415
        for docs in (tmp_path / "idx" / "versions" / "v-00001").glob("docs-*.parquet"):
            docs.unlink()
        status, body = _request("/nokey/v1/search", {"query": "shoes", "k": 2}, key=None)
        assert status == 500 and body["error"]["code"] == "internal_error", body
        message = body["error"]["message"]
        assert "error id" in message and "docs-" not in message and str(tmp_path) not in message
        assert _request("/nokey/healthz", key=None)[0] == 200
    finally:
        serve.delete("nokey")


def _serve_small_index(served: Path, tmp_path: Path, name: str) -> None:
    """An index of the served corpus's embedding set under `tmp_path` (nothing embedded
    again), served as app `name` at /`name` with the test key (the caller deletes it)."""
    import shutil

    from ray import serve

    from embedlib.serve.app import build_app

    shutil.copytree(served.parent / "emb", tmp_path / "emb")
    build_index(str(tmp_path / "emb"), str(tmp_path / "idx"), run=LOCAL)
    serve.run(build_app(str(tmp_path / "idx"), searcher_cpus=0.1, app_name=name, api_key=KEY,
                        route_prefix=f"/{name}"), name=name, route_prefix=f"/{name}")  # fmt: skip


def test_gc_while_serving_keeps_the_served_version(served, tmp_path):
    """A server without --watch serves v-00001; two builds publish v-00002 and v-00003;
    `gc --keep 1 --retain 0` removes v-00002 only: the replicas' lease keeps v-00001,
    and every search still answers (it answered 503/500 once gc had deleted it)."""
    from ray import serve

    from embedlib.index.update.gc import gc_versions

    _serve_small_index(served, tmp_path, "gcapp")
    try:
        for _ in range(2):
            build_index(str(tmp_path / "emb"), str(tmp_path / "idx"), run=LOCAL)
        assert gc_versions(str(tmp_path / "idx"), keep=1, retain_s=0) == ["v-00002"]
        for _ in range(3):
            status, body = _request("/gcapp/v1/search", {"query": "cheap shoes", "k": 1})
            assert status == 200 and body["results"][0]["id"] == "2", body
    finally:
        serve.delete("gcapp")


def test_a_damaged_version_is_refused_and_serving_goes_on(served, tmp_path):
    """A new version whose shard file is truncated (as a full disk leaves it), then a
    reload: refused with 409 naming the shard, and every search answers from the version
    served (the reload used to stop the old replicas and answer 503 from then on)."""
    from ray import serve

    _serve_small_index(served, tmp_path, "dmg")
    try:
        build_index(str(tmp_path / "emb"), str(tmp_path / "idx"), run=LOCAL)
        shard = tmp_path / "idx" / "versions" / "v-00002" / "shard-00000.faiss"
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
        status, body = _request("/dmg/v1/admin/reload", {})
        assert status == 409 and body["error"]["code"] == "version_damaged", body
        assert "shard-00000.faiss" in body["error"]["message"]
        for _ in range(3):
            status, body = _request("/dmg/v1/search", {"query": "cheap shoes", "k": 1})
            assert status == 200 and body["results"][0]["id"] == "2", body
        assert _request("/dmg/v1/indexes")[1]["indexes"][0]["version"] == "v-00001"
        assert _request("/dmg/healthz")[0] == 200
    finally:
        serve.delete("dmg")


def _finished(status_url: str, timeout_s: float = 300) -> dict:
    """A write's or reload's record once it is done or failed."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, record = _request(status_url)
        assert status == 200, record
        if record["status"] in ("done", "failed") or time.monotonic() > deadline:
            return record
        time.sleep(0.5)


class _ReplicaWatch:
    """A thread's loop: the fewest running replicas an app's Gateway had, polled from
    Serve's status until `done` is set (not through HTTP: a request to an app without
    replicas waits, and polls made through it would miss that time)."""

    def __init__(self, app: str, done: threading.Event) -> None:
        self.app, self.done = app, done
        self.fewest: int | None = None
        self.polls = 0

    def __call__(self) -> None:
        from ray import serve

        while not self.done.is_set():
            states = serve.status().applications[self.app].deployments["Gateway"].replica_states
            running = states.get("RUNNING", 0)
            self.fewest = running if self.fewest is None else min(self.fewest, running)
            self.polls += 1
            time.sleep(0.2)


def test_a_version_whose_replicas_fail_to_start_is_rolled_back(served, tmp_path):
    """A version that passes verification but whose replicas cannot start (its model
    folder was moved away after the build), then a reload: new replicas start beside the
    old ones, which answer every search throughout; once Serve gives up on the new ones,
    the served version is deployed again and the reload's record says so (Serve used to
    stop the old replicas first: every search then answered 503)."""
    from ray import serve

    _serve_small_index(served, tmp_path, "roll")
    done = threading.Event()
    query_loop, watch = _QueryLoop(done, "/roll"), _ReplicaWatch("roll", done)
    threads = [threading.Thread(target=query_loop), threading.Thread(target=watch)]
    for thread in threads:
        thread.start()
    try:
        build_index(str(tmp_path / "emb"), str(tmp_path / "idx"), run=LOCAL)
        manifest = tmp_path / "idx" / "versions" / "v-00002" / "manifest.json"
        fields = json.loads(manifest.read_text())
        fields["model"]["name"] = str(tmp_path / "moved-model")
        manifest.write_text(json.dumps(fields))
        status, body = _request("/roll/v1/admin/reload", {})
        assert status == 202 and body["to"] == "v-00002", body
        record = _finished("/roll" + body["status_url"])
        assert record["kind"] == "reload" and record["status"] == "failed", record
        assert record["error"]["code"] == "switch_failed", record
        assert "rolled back: v-00001 is served" in record["error"]["message"], record
        assert _request("/roll/v1/indexes")[1]["indexes"][0]["version"] == "v-00001"
        status, body = _request("/roll/v1/search", {"query": "cheap shoes", "k": 1})
        assert status == 200 and body["results"][0]["id"] == "2", body
        assert _metric("/roll", "version_events_total", 1, event="rolled_back") >= 1
    finally:
        done.set()
        for thread in threads:
            thread.join()
        serve.delete("roll")
    query_loop.check(at_least=10)
    assert watch.polls >= 10 and watch.fewest == 1, (watch.polls, watch.fewest)  # never none


def test_the_read_key_searches_and_only_the_admin_key_writes(served):
    """EMBEDLIB_READ_KEY opens searches, the page's API and /openapi.json, never a write
    or a reload (403); EMBEDLIB_API_KEY opens everything. The page and its script load
    without a key, under a policy that runs no inline script."""
    from ray import serve

    from embedlib.serve.app import build_app

    serve.run(build_app(str(served), searcher_cpus=0.1, app_name="roles", api_key=KEY,
                        read_key="reader-key", route_prefix="/roles"),
              name="roles", route_prefix="/roles")  # fmt: skip
    try:
        query = {"query": "cheap shoes", "k": 1}
        assert _request("/roles/v1/search", query, key="reader-key")[1]["results"][0]["id"] == "2"
        assert _request("/roles/v1/search", query)[0] == 200  # the admin key reads too
        assert _request("/roles/v1/search", query, key=None)[0] == 401
        assert _request("/roles/v1/search", query, key="wrong")[0] == 401
        assert _request("/roles/openapi.json", key="reader-key")[0] == 200
        doc = {"id": "9", "text": "lava", "metadata": {}}
        for path, body in (("/v1/upsert", {"documents": [doc]}), ("/v1/delete", {"ids": ["1"]}),
                           ("/v1/admin/reload", {}), ("/v1/writes/x", None)):  # fmt: skip
            status, answer = _request("/roles" + path, body, key="reader-key")
            assert status == 403 and answer["error"]["code"] == "admin_key_required", (path, answer)
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/roles/", timeout=30) as r:
            page, policy = r.read().decode(), r.headers["Content-Security-Policy"]
        assert '<script src="/roles/search.js">' in page and "<script>" not in page
        scripts = next(p for p in policy.split(";") if "script-src" in p)
        assert scripts.strip() == "script-src 'self'"
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/roles/search.js", timeout=30) as r:
            assert r.headers.get_content_type() == "text/javascript" and b"fetch(" in r.read()
    finally:
        serve.delete("roles")


@pytest.mark.slow  # a Ray instance and a Serve app of its own, started and stopped: 35 s
def test_serve_watch_follows_current_and_ctrl_c_stops_everything(tmp_path, served):
    import os
    import shutil
    import signal
    import subprocess
    import sys

    index = tmp_path / "idx"
    shutil.copytree(served, index)
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - the server writes to it until it stops
    port = free_port()
    # a Ray instance of its own, not the test session's
    env = dict(os.environ, HF_HUB_OFFLINE="1", EMBEDLIB_API_KEY=KEY, RAY_ADDRESS="local")
    proc = subprocess.Popen(
        [sys.executable, "-m", "embedlib.cli", "serve", str(index), "--port", str(port), "--watch"],
        env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 180
        ready = False
        while time.time() < deadline and not ready:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                    ready = r.status == 200
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1)
        assert ready
        from embedlib.serve.run import stop_orphaned_haproxy

        assert stop_orphaned_haproxy() == []  # the live server's HAProxy has its manager
        build_index(str(served.parent / "emb"), str(index), run=LOCAL)  # v-00002 beside v-00001
        headers = {"Authorization": f"Bearer {KEY}"}
        version = None
        while time.time() < deadline and version != "v-00002":
            time.sleep(1)
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/indexes", headers=headers)
            with urllib.request.urlopen(req, timeout=10) as r:
                version = json.loads(r.read())["indexes"][0]["version"]
        assert version == "v-00002"
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.time() + 30  # workers leave once they see their raylet gone
    while True:
        out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
        left = [line for line in out.splitlines() if line.split()[1] == str(proc.pid)]
        if not left or time.time() > deadline:
            break
        time.sleep(1)
    assert left == [], f"{len(left)} processes of the server's session outlived Ctrl-C"
    assert stop_orphaned_haproxy() == []  # HAProxy (a session of its own) stopped with Serve


def test_reload_switches_to_a_new_version_without_dropping_requests(served):
    root = served.parent
    (root / "more.jsonl").write_text(
        "".join(
            json.dumps({"id": i, "text": t, "lang": lang, "year": y}) + "\n"
            for i, t, lang, y in DOCS
        )
        + json.dumps({"id": "7", "text": "quantum computing lecture", "lang": "en", "year": 2023})
        + "\n"
    )
    embed_corpus(str(root / "more.jsonl"), str(root / "emb2"), options=EmbedOptions(), run=LOCAL)
    assert _request("/v1/admin/reload", {}, key=None)[0] == 401
    assert _request("/v1/admin/reload", {}) == (200, {"reloading": False, "version": "v-00001"})
    build_index(str(root / "emb2"), str(served), run=LOCAL)
    done = threading.Event()
    query_loop = _QueryLoop(done)
    loop = threading.Thread(target=query_loop)
    loop.start()
    try:
        status, body = _request("/v1/admin/reload", {})
        assert status == 202 and body["to"] == "v-00002", body
        record = _finished(body["status_url"])
        assert record["kind"] == "reload" and record["status"] == "done", record
        assert record["switched"] and record["previous"] == "v-00001", record
        deadline = time.time() + 180
        while (
            time.time() < deadline
            and _request("/v1/indexes")[1]["indexes"][0].get("version") != "v-00002"
        ):
            time.sleep(1)
        assert _request("/v1/indexes")[1]["indexes"][0]["ntotal"] == len(DOCS) + 1
    finally:
        done.set()
        loop.join()
    query_loop.check(at_least=10)
    assert (
        _request("/v1/search", {"query": "quantum physics class", "k": 1})[1]["results"][0]["id"]
        == "7"
    )


def test_python_client_and_query_command(served):
    import subprocess
    import sys

    client = Client(f"http://127.0.0.1:{PORT}", api_key=KEY)
    assert client.search("buy cheap shoes", k=1)[0].id == "2"
    assert client.search("buy cheap shoes", k=1, exclude=["2"])[0].id != "2"
    assert client.search(Query(text="buy cheap shoes", k=1, include=["text"]))[0].text == (
        "buy cheap shoes"
    )
    assert [
        r[0].id
        for r in client.search_batch([Query(text="cat video", k=1), Query(text="cheap shoes", k=1)])
    ] == ["0", "2"]
    assert (
        client.embed(["cat video"]).shape == (1, 384) and client.info()["indexes"][0]["dim"] == 384
    )
    vectors = client.embed(["cat video", "cheap shoes"])
    assert [r[0].id for r in client.search_vectors(vectors, k=1)] == ["0", "2"]
    with pytest.raises(ClientError) as e:
        Client(f"http://127.0.0.1:{PORT}").search("x")
    assert e.value.status == 401
    out = subprocess.run(
        [sys.executable, "-m", "embedlib.cli", "query", f"http://127.0.0.1:{PORT}", "buy cheap shoes", "-k", "2", "--api-key", KEY],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0 and "buy cheap shoes" in out.stdout.splitlines()[1]


def test_slow_requests_get_504_and_the_config_file_builder(served):
    from ray import serve

    from embedlib.serve.app import app_builder, build_app

    serve.run(
        build_app(str(served), request_timeout_s=1e-6, searcher_cpus=0.1, encoder_cpus=0.1),
        name="slow",
        route_prefix="/slow",
    )
    try:
        status, body = _request("/slow/v1/search", {"query": "cat video"}, key=None)
        assert status == 504 and body["error"]["code"] == "timeout"
    finally:
        serve.delete("slow")
    app = app_builder({"index": str(served), "replicas": 1, "placement": "per-shard"})
    assert type(app).__name__ == "Application"


def test_filters_inside_faiss_keep_recall(tmp_path, glove, monkeypatch):
    """Above the exact-search limit a filter becomes an ID selector inside the IVF search,
    with nprobe scaled to the share of matching rows: recall against exact search over the
    matching rows stays high."""

    import embedlib.search.shards

    _, words, vectors = glove
    n = 60_000
    vec = pa.FixedSizeListArray.from_arrays(pa.array(vectors[:n].reshape(-1)), 50)
    bucket = np.arange(n) % 10
    pq.write_table(
        pa.table({"id": words[:n], "vector": vec, "bucket": bucket}), tmp_path / "g.parquet"
    )
    build_index(
        str(tmp_path / "g.parquet"),
        str(tmp_path / "idx"),
        options=__import__("embedlib").index.IndexOptions(shards=2),
        run=LOCAL,
    )
    monkeypatch.setattr(embedlib.search.shards, "EXACT_FILTER_LIMIT", 0)
    index = ShardedIndex(str(tmp_path / "idx"))
    xn = vectors[:n] / np.linalg.norm(vectors[:n], axis=1, keepdims=True)
    rng = np.random.default_rng(1)
    queries = xn[rng.choice(n, 100, replace=False)]
    hits = index.search(queries, 10, filter={"bucket": {"in": [3]}}, include=("metadata",))
    assert all(h.metadata["bucket"] == 3 for row in hits for h in row)
    position = {w: i for i, w in enumerate(words[:n])}
    found = [[position[h.id] for h in row] for row in hits]
    allowed = np.flatnonzero(bucket == 3)
    truth = allowed[np.argsort(-(queries @ xn[allowed].T), axis=1)[:, :10]]
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
    assert recall >= 0.95, recall


def test_long_documents_answer_with_their_passages_over_http(served, tmp_path):
    """A chunked index served: each hit a distinct document with its best passages, the
    same as the library's; `group: chunk` answers with chunks."""
    from ray import serve

    from embedlib.serve.app import build_app
    from tests import corpora

    docs = corpora.module_documents(["json", "shutil", "fnmatch", "textwrap"])
    (tmp_path / "d.jsonl").write_text(
        "".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in docs.items())
    )
    embed_corpus(str(tmp_path / "d.jsonl"), str(tmp_path / "emb"), run=LOCAL)
    build_index(str(tmp_path / "emb"), str(tmp_path / "idx"), run=LOCAL)
    serve.run(build_app(str(tmp_path / "idx"), api_key=KEY, searcher_cpus=0.1),
              name="long", route_prefix="/long")  # fmt: skip
    try:
        index = ShardedIndex(str(tmp_path / "idx"))
        body = {"query": "copy a file and its permissions", "k": 4, "passages": 2}
        status, answer = _request("/long/v1/search", body)
        assert status == 200, answer
        local = index.search_text([body["query"]], 4, passages=2)[0]
        assert _same(answer["results"], local, docs=True)
        assert len({r["id"] for r in answer["results"]}) == 4
        for r, h in zip(answer["results"], local, strict=True):
            p = r["passage"]
            assert docs[r["id"]][p["start"] : p["end"]] == p["text"] == h.passage.text
            assert [q["chunk"] for q in r.get("passages", [p])] == [
                q.chunk for q in h.passages or [h.passage]
            ]
        status, answer = _request("/long/v1/search", {**body, "group": "chunk", "k": 3})
        assert status == 200 and len(answer["results"]) == 3
    finally:
        serve.delete("long")


def test_watch_keeps_serving_through_a_broken_version_and_moves_on(tmp_path):
    """`--watch`'s watcher: a version that cannot be opened is skipped (logged, retried
    later) and the served one stays; a good new version is taken."""
    from embedlib.index.store.layout import published_version
    from embedlib.serve.run import VersionWatcher

    rng = np.random.default_rng(0)
    table = pa.table({"id": [f"v{i}" for i in range(40)],
                      "vector": list(rng.standard_normal((40, 8)).astype(np.float32))})  # fmt: skip
    pq.write_table(table, tmp_path / "v.parquet")
    root = tmp_path / "idx"
    build_index(str(tmp_path / "v.parquet"), str(root), run=LOCAL)
    watcher = VersionWatcher(str(root), "v-00001", {})
    assert watcher.next_version() is None
    broken = root / "versions" / "v-00002"
    broken.mkdir()
    (broken / "manifest.json").write_text("{ not json")
    (root / "CURRENT").write_text("v-00002")
    assert watcher.next_version() is None and watcher.failures == 1
    assert watcher.next_version() is None and watcher.failures == 1  # waiting to retry
    watcher.retry_at = 0.0
    assert watcher.next_version() is None and watcher.failures == 2  # still broken
    (root / "CURRENT").write_text("v-00001")
    watcher.retry_at = 0.0
    assert watcher.next_version() is None and watcher.failures == 0
    build_index(str(tmp_path / "v.parquet"), str(root), run=LOCAL)
    assert watcher.next_version() == published_version(str(root)) != "v-00001"


def test_watch_outlives_an_error_a_storage_client_raises_its_own_way(tmp_path, monkeypatch):
    """gcsfs raises HttpError (neither OSError nor ValueError): the watcher keeps the
    served version and retries, instead of ending `embedlib serve --watch`."""
    import embedlib.serve.run as run_module

    class HttpError(Exception):  # as gcsfs.retry.HttpError: a plain Exception
        pass

    def unreachable(*args, **kwargs):
        raise HttpError("503 backend error")

    monkeypatch.setattr(run_module, "published_version", unreachable)
    watcher = run_module.VersionWatcher(str(tmp_path), "v-00001", {})
    assert watcher.next_version() is None and watcher.failures == 1


def test_named_collections_behind_one_server(served, tmp_path):
    """Three collections in one app (two text indexes of one model, GloVe words): each
    answers its own queries at /v1/collections/NAME/..., the un-prefixed routes answer the
    default, an unknown name is a 404 naming those that exist, the two text collections
    share one Encoder, metrics are labelled by collection, and a write to one collection
    moves only its version."""
    import shutil
    import subprocess
    import sys

    from ray import serve

    from embedlib.serve.app import build_app
    from embedlib.serve.config import collection_specs
    from embedlib.uses.word_vectors import PACKAGED_GLOVE, import_word_vectors

    shutil.copytree(served, tmp_path / "docs2")
    import_word_vectors(PACKAGED_GLOVE, str(tmp_path / "glove"), limit=20_000)
    build_index(str(tmp_path / "glove"), str(tmp_path / "words"), run=LOCAL)
    specs = collection_specs(
        [f"words={tmp_path / 'words'}", f"docs={served}", str(tmp_path / "docs2")], "docs"
    )
    assert [s.name for s in specs] == ["docs", "words", "docs2"]  # the default first
    serve.run(build_app(collections=specs, api_key=KEY, placement="grouped", searcher_cpus=0.05,
                        encoder_cpus=0.1, app_name="multi", route_prefix="/multi"),
              name="multi", route_prefix="/multi")  # fmt: skip
    try:
        status, body = _request("/multi/v1/collections")
        assert status == 200 and body["default"] == "docs"
        info = {c["name"]: c for c in body["collections"]}
        assert list(info) == ["docs", "words", "docs2"]
        assert info["words"]["text_model"] is False and info["words"]["dim"] == 50
        assert info["docs"]["modes"] == ["dense", "lexical", "hybrid"]
        query = {"query": "how to train a neural net", "k": 3}
        want = [h.id for h in ShardedIndex(str(served)).search_text([query["query"]], 3)[0]]
        for path in ("/multi/v1/search", "/multi/v1/collections/docs/search",
                     "/multi/v1/collections/docs2/search"):  # fmt: skip
            status, body = _request(path, query)
            assert status == 200 and [r["id"] for r in body["results"]] == want
        status, body = _request("/multi/v1/collections/words/search",
                                {"positive": ["king", "woman"], "negative": ["man"], "k": 1})  # fmt: skip
        assert status == 200 and body["results"][0]["id"] == "queen"
        status, body = _request("/multi/v1/collections/nope/search", query)
        assert status == 404 and body["error"]["code"] == "no_such_collection"
        assert "docs, docs2, words" in body["error"]["message"]
        deployments = serve.status().applications["multi"].deployments
        assert sorted(n for n in deployments if n.startswith("Encoder")) == ["Encoder"]
        route = "/v1/collections/{collection}/search"
        assert _metric("/multi", "requests_total", 1, route=route, collection="words", status="200")
        assert _metric("/multi", "requests_total", 1, collection="unknown", status="404")
        model = posixpath.basename(ShardedIndex(str(served)).manifest.model.name)
        status, body = _request("/multi/v1/embeddings", {"input": "cat video", "model": model})
        assert status == 200 and len(body["data"][0]["embedding"]) == 384, body
        status, body = _request("/multi/v1/embeddings", {"input": "cat", "model": "glove"})
        assert status == 404 and model in body["error"]["message"]  # names the served model
        url = f"http://127.0.0.1:{PORT}/multi"
        hits = Client(url, KEY, collection="words").search(positive=["paris", "germany"],
                                                          negative=["france"], k=1)  # fmt: skip
        assert hits[0].id == "berlin"
        out = subprocess.run(
            [sys.executable, "-m", "embedlib.cli", "query", url, "cheap shoes", "-k", "1",
             "--collection", "docs2", "--api-key", KEY],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0 and "buy cheap shoes" in out.stdout, out.stderr
        before = info["docs"]["version"]
        record = Client(url, KEY, collection="docs2").upsert(
            [{"id": "v1", "text": "volcanoes erupt with lava", "metadata": {}}], wait_s=180
        )
        assert record["status"] == "done" and record["switched"], record
        deadline = time.time() + 90
        while time.time() < deadline:
            versions = {
                c["name"]: c["version"] for c in _request("/multi/v1/collections")[1]["collections"]
            }
            if versions["docs2"] == record["version"]:
                break
            time.sleep(0.5)
        assert versions == {"docs": before, "words": "v-00001", "docs2": record["version"]}
        status, body = _request("/multi/v1/collections/docs2/search", {"query": "lava", "k": 1})
        assert body["results"][0]["id"] == "v1"
        status, body = _request("/multi/v1/search", {"query": "lava", "k": 1})
        assert body["results"][0]["id"] != "v1"  # the default collection is unchanged
    finally:
        serve.delete("multi")


CHROMIUM = "/usr/bin/chromium"  # Debian's; `make setup` installs it
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def searched(page, action) -> None:
    """Do `action` and wait until the page has shown the search it sent."""
    import re

    from playwright.sync_api import expect

    with page.expect_response(lambda r: r.url.endswith("/search")):
        action()
    # a locator assertion, not wait_for_function: that evaluates a string in the page,
    # which the page's content security policy (no 'unsafe-eval') refuses
    expect(page.locator("#status")).not_to_have_text(re.compile(r"^search"))


def test_the_search_page_in_a_real_browser(served):
    """The page at / in headless Chromium: a shared link runs its query on load (asking
    for the key once per tab), shows the library's ranking with the query's words marked,
    filters on metadata, offers the collection's modes, and "more like this" searches by
    the document's id. It reaches nothing but this server."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "install Debian's chromium (make setup does)"
    want = [h.id for h in ShardedIndex(str(served)).search_text(["training a neural net"], 10)[0]]
    asked, outside = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("dialog", lambda d: (asked.append(d.message), d.accept(KEY)))
            page.on("request", lambda r: outside.append(r.url)
                    if not r.url.startswith(f"http://127.0.0.1:{PORT}/") else None)  # fmt: skip
            page.goto(f"http://127.0.0.1:{PORT}/?q=training+a+neural+net")
            page.wait_for_selector("li.hit")
            assert page.locator("li.hit .id").all_inner_texts() == want
            assert len(asked) == 1 and "API key" in asked[0]
            marked = {m.lower() for m in page.locator("li.hit mark").all_inner_texts()}
            assert marked == {"training", "neural", "net"}  # at word starts; "a": too short
            assert page.locator("#mode option").all_inner_texts()[1:] == [
                "dense",
                "lexical",
                "hybrid",
            ]
            page.reload()  # the key is kept for the tab
            page.wait_for_selector("li.hit")
            assert len(asked) == 1
            page.fill("#filter", "lang=de")
            searched(page, lambda: page.click("button[type=submit]"))
            langs = page.locator("li.hit .meta span").all_inner_texts()
            assert langs and all(t == 'lang: "de"' or t.startswith("year") for t in langs)
            page.fill("#filter", "")
            first = page.locator("li.hit .id").first.inner_text()
            searched(page, lambda: page.locator("li.hit .more a").first.click())
            assert "like=" in page.url
            assert first not in page.locator("li.hit .id").all_inner_texts()
            assert "like" in page.locator("#status").inner_text()
        finally:
            browser.close()
    assert outside == []


def test_metrics_count_every_request_once_across_gateway_replicas(served):
    """Two gateway replicas answer in turn; the metrics count each request once, whichever
    answered, and the latency histogram holds them all."""
    from ray import serve

    from embedlib.serve.app import build_app

    serve.run(
        build_app(str(served), api_key=KEY, replicas=2, searcher_cpus=0.1),
        name="two",
        route_prefix="/two",
    )
    try:
        n = 40
        for i in range(n):
            status, _ = _request("/two/v1/search", {"query": f"cat video {i}", "k": 1})
            assert status == 200
        replicas = serve.status().applications["two"].deployments["Gateway"].replica_states
        assert replicas.get("RUNNING") == 2
        labels = {"app": "two", "route": "/v1/search", "status": "200"}
        assert _metric("/two", "requests_total", n, **labels) == n
        assert _metric("/two", "request_seconds_count", n, app="two", route="/v1/search") == n
        workers = {
            s.labels["WorkerId"]
            for family in text_string_to_metric_families(_request("/two/metrics")[1])
            for s in family.samples
            if s.name == "ray_embedlib_requests_total" and s.labels.get("app") == "two"
        }
        assert len(workers) == 2  # both replicas answered some
    finally:
        serve.delete("two")


@pytest.mark.slow  # schemathesis generates ~3,000 requests: 2-3 min
def test_generated_requests_find_no_server_error_and_no_unstated_rule(served, tmp_path):
    """schemathesis reads /openapi.json and sends requests generated from it (examples,
    boundaries and random bodies, valid and invalid): no 5xx, every answer conforms to its
    declared schema, and no read operation refuses nearly every request the document
    calls valid (its "schema validation mismatch" warning: a rule the document does not
    state). The writes run apart, checked for 5xx and conformance only: each accepted
    one changes the index the document described (a new metadata column keeps its type
    from then on) and the bounded write queue answers 429, so how many they accept
    depends on timing."""
    writes = "(upsert|delete|reload)$"
    reads = _schemathesis(tmp_path / "reads", "--exclude-path-regex", writes)
    assert "validation mismatch" not in reads.lower(), reads[-6000:]
    generated = re.search(r"(\d+) generated, \1 passed", reads)
    assert generated and int(generated.group(1)) > 500, reads[-3000:]
    _schemathesis(tmp_path / "writes", "--include-path-regex", writes)


def _schemathesis(report: Path, *selection: str) -> str:
    """Run schemathesis against the served app; its output, once it exited 0 (no failure)."""
    import subprocess
    import sys

    st = Path(sys.executable).parent / "st"
    run = subprocess.run(
        [str(st), "run", f"http://127.0.0.1:{PORT}/openapi.json", *selection,
         "-H", f"Authorization: Bearer {KEY}",
         "--checks", "not_a_server_error,response_schema_conformance",
         "--phases", "examples,coverage,fuzzing", "--max-examples", "40",
         "--seed", "1", "--workers", "1", "--report", "ndjson", "--report-dir", str(report)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    return out
