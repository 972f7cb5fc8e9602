"""The one query path in the library: `Query` values, the `Searcher` (defaults, filters,
exclusions with over-fetch, arithmetic, batching), and the typed manifests it reads.
No Ray: `ShardedIndex` over a small real index of the default model's vectors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedlib import (
    EmbeddingSet,
    EmbedOptions,
    FilterError,
    IndexManifest,
    Query,
    QueryError,
    RunOptions,
    ShardedIndex,
    TextItem,
    embed_corpus,
)
from embedlib.index import IndexOptions, build_index
from embedlib.index.store.version import SearchParams
from embedlib.sets.embedding_set import EmbeddingSetManifest

LOCAL = RunOptions(runner="local", progress=False)
TOPICS = ["gardening", "tax forms", "train timetables", "soup recipes", "neural networks"]


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> ShardedIndex:
    root = tmp_path_factory.mktemp("query-path")
    with open(root / "docs.jsonl", "w") as fh:
        for i in range(120):
            text = f"a note about {TOPICS[i % 5]}, number {i}"
            row = {
                "id": f"d{i}",
                "text": text,
                "lang": ["en", "de", "fr"][i % 3],
                "year": 2000 + i % 7,
            }
            fh.write(json.dumps(row) + "\n")
    embed_corpus(str(root / "docs.jsonl"), str(root / "emb"), options=EmbedOptions(), run=LOCAL)
    build_index(str(root / "emb"), str(root / "idx"), options=IndexOptions(shards=3), run=LOCAL)
    return ShardedIndex(str(root / "idx"))


def _exact(index: ShardedIndex, query: np.ndarray, ids: list[str], k: int) -> list[str]:
    """The k ids of `ids` nearest `query`, by brute force over the indexed vectors."""
    q = query / np.linalg.norm(query)
    return sorted(ids, key=lambda i: -float(index.vector(i) @ q))[:k]


def test_queries_are_checked_when_made():
    for bad in (
        {},  # no kind
        {"text": "x", "vector": [1.0]},  # two kinds
        {"text": "  "},
        {"text": "x", "k": 0},
        {"text": "x", "nprobe": 0},
        {"text": "x", "include": ["text", "colour"]},
    ):
        with pytest.raises(QueryError):
            Query(**bad)
    assert Query(positive=["a", TextItem("b")], negative=[TextItem("c")]).texts() == ["b", "c"]
    assert SearchParams(nprobe=8).override(nprobe=None, ef_search=None) == SearchParams(nprobe=8)
    assert SearchParams(nprobe=8).override(nprobe=2, ef_search=None) == SearchParams(nprobe=2)


def test_a_filter_selects_documents_inside_the_search(index):
    query = index.encode_text(["soup and gardening"])[0]
    matching = [f"d{i}" for i in range(120) if i % 3 == 1 and 2000 + i % 7 in (2001, 2003)]
    hits = index.search(query[None], 10, filter={"lang": "de", "year": {"in": [2001, 2003]}})[0]
    assert [h.id for h in hits] == _exact(index, query, matching, 10)
    assert all(h.metadata["lang"] == "de" and h.metadata["year"] in (2001, 2003) for h in hits)
    text_hits = index.search_text(
        ["soup and gardening"], 10, filter={"lang": "de", "year": {"in": [2001, 2003]}},
        mode="dense",
    )  # fmt: skip
    assert [h.id for h in text_hits[0]] == [h.id for h in hits]
    with pytest.raises(FilterError, match=r"'colour'.*it has 'lang', 'year'"):
        index.search(query[None], 3, filter={"colour": "red"})
    with pytest.raises(QueryError, match="must be a value or"):  # the contract's shape
        index.search(query[None], 3, filter={"lang": {"like": "e%"}})
    assert index.search(query[None], 5, filter={"lang": "xx"})[0] == []


def test_excluded_ids_are_left_out_and_k_hits_remain(index):
    query = index.encode_text(["tax forms"])[0][None]
    top = [h.id for h in index.search(query, 12, include=())[0]]
    hits = index.search(query, 10, exclude=top[:2], include=())[0]
    assert [h.id for h in hits] == top[2:12]
    # an id the index does not hold excludes nothing (as a filter matching no row)
    with_unknown = index.search(query, 10, exclude=[*top[:2], "nope"], include=())[0]
    assert [h.id for h in with_unknown] == top[2:12]
    with pytest.raises(QueryError, match="'nope' is not in the index"):  # an input is needed
        index.most_similar(positive=["nope"], k=3)


def test_vector_arithmetic_by_ids_texts_and_vectors(index):
    v1, v2, v3 = index.vector("d4"), index.vector("d9"), index.encode_text(["timetables"])[0]
    by_ids = index.most_similar(positive=["d4", "d9"], negative=[v3], k=5, include=())
    assert {"d4", "d9"}.isdisjoint(h.id for h in by_ids)
    mean = (v1 / np.linalg.norm(v1) + v2 / np.linalg.norm(v2) - v3 / np.linalg.norm(v3)) / 3
    everyone = [f"d{i}" for i in range(120) if i not in (4, 9)]
    assert [h.id for h in by_ids] == _exact(index, mean, everyone, 5)
    by_text = index.most_similar(
        positive=["d4", TextItem("timetables")], k=3, filter={"lang": "fr"}
    )
    assert all(h.metadata["lang"] == "fr" for h in by_text) and len(by_text) == 3


def test_a_batch_of_mixed_queries_equals_each_query_alone(index):
    """Queries with equal parameters are stacked into one FAISS search: stacking and
    splitting back must give every query its own answer."""
    vectors = index.encode_text(["gardening tips", "neural nets", "soup"])
    queries = [
        Query(text="train times", k=3),
        Query(vector=vectors[0], k=5, include=()),
        Query(vector=vectors[1], k=5, include=("vector",)),
        Query(vector=vectors[2], k=4, filter={"lang": "en"}),
        Query(positive=["d3"], k=2),
        Query(vector=vectors[0], k=5, exclude=["d0"], include=()),
    ]
    together = index.query(queries)
    alone = [index.query([q])[0] for q in queries]
    assert [[h.id for h in a] for a in together] == [[h.id for h in a] for a in alone]
    for a, b in zip(together, alone, strict=True):
        assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-6)
    assert len(together[2][0].vector) == 384 and together[1][0].text is None
    batch = index.search(vectors, 5, include=())
    assert [[h.id for h in hits] for hits in batch] == [
        [h.id for h in index.search(v[None], 5, include=())[0]] for v in vectors
    ]


def test_the_typed_manifests_keep_every_field(index, tmp_path):
    stored = json.loads((Path(index.version.path) / "manifest.json").read_text())
    assert IndexManifest.from_dict(stored).to_dict() == stored
    m = index.manifest
    assert m.text_model and m.model is not None and m.model.dim == 384 and len(m.shards) == 3
    assert m.plan.mergeable and m.tuning.recall_at_10 is not None
    eset = EmbeddingSet(str(Path(index.version.path).parents[2] / "emb"))
    assert eset.manifest.documents == 120 and eset.manifest.parts[0].file == "part-00000.parquet"
    stored = json.loads((Path(eset.path) / "manifest.json").read_text())
    assert EmbeddingSetManifest.from_dict(stored).to_dict() == stored
    # a set written before the format named its files "parts" still reads
    old = {**stored, "format_version": 1, "shards": stored["parts"]}
    del old["parts"]
    assert EmbeddingSetManifest.from_dict(old).parts == eset.manifest.parts


def test_indexes_of_one_model_share_one_query_model(index):
    """Collections in one server hold one query model per distinct fingerprint."""
    from embedlib.models.encoders import QueryModels

    models = QueryModels()
    root = index.version.url.rsplit("/versions/", 1)[0]
    a = ShardedIndex(root, query_models=models)
    b = ShardedIndex(root, query_models=models)
    assert a.query_model() is b.query_model() and len(models) == 1
    assert ShardedIndex(root).query_model() is not a.query_model()  # not shared unless asked
    np.testing.assert_allclose(a.encode_text(["a note"]), index.encode_text(["a note"]), atol=1e-6)


def test_a_heavy_request_runs_in_a_thread_and_stops_at_its_deadline(index, monkeypatch):
    """On a server's event loop, a request with excluded ids is planned, merged and joined
    in a thread (the loop stays free for /healthz); under a deadline already passed that
    work stops between slices (DeadlineExceededError, a 504), and without one it answers.
    A small dense request stays on the loop."""
    import asyncio
    import threading

    from embedlib.exceptions import DeadlineExceededError
    from embedlib.search.deadline import deadline_in
    from embedlib.search.searcher import Searcher
    from embedlib.serve.placement import LocalPlacement

    planned_in: list[int] = []
    plan = Searcher.plan

    def spy(self, *args, **kwargs):
        planned_in.append(threading.get_ident())
        return plan(self, *args, **kwargs)

    monkeypatch.setattr(Searcher, "plan", spy)
    placement = LocalPlacement(index)
    vector = index.encode_text(["gardening tips"])[0]
    heavy = [Query(vector=vector, k=5, exclude=["d0", "d5"]) for _ in range(40)]

    async def ask(queries: list[Query], seconds: float) -> tuple[int, list]:
        with deadline_in(seconds):
            hits = (await index.searcher.run_async(queries, placement)).hits
        return threading.get_ident(), hits

    with pytest.raises(DeadlineExceededError):
        asyncio.run(ask(heavy, -1.0))
    loop, hits = asyncio.run(ask(heavy, 60.0))
    assert planned_in[-1] != loop  # planned in a thread
    assert len(hits) == 40 and all(len(h) == 5 and {"d0", "d5"}.isdisjoint(x.id for x in h)
                                   for h in hits)  # fmt: skip
    assert [x.id for x in hits[0]] == [x.id for x in index.query([heavy[0]])[0]]
    loop, hits = asyncio.run(ask([Query(vector=vector, k=5)], 60.0))
    assert planned_in[-1] == loop and len(hits[0]) == 5  # small: on the loop
    # one-vector searches that cannot be stacked (distinct nprobe): one thread runs them
    # all (each was small enough to run on the loop, and 1,000 of them held it 2.8 s)
    searched_in: list[int] = []
    search_one = type(index.shards).search_one

    def spy_search(self, task):
        searched_in.append(threading.get_ident())
        return search_one(self, task)

    monkeypatch.setattr(type(index.shards), "search_one", spy_search)
    distinct = [Query(vector=vector, k=3, nprobe=1 + i) for i in range(40)]
    loop, hits = asyncio.run(ask(distinct, 60.0))
    assert len(hits) == 40 and loop not in searched_in and len(set(searched_in)) == 1
    with pytest.raises(DeadlineExceededError):
        asyncio.run(ask(distinct, -1.0))
