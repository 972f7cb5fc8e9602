"""The Searcher driven by fakes: what a query means (exclusions, arithmetic, filters,
chunks as documents, deeper rounds, hybrid fusion, explain), the same through the
synchronous and the asynchronous drivers."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from embedlib.exceptions import FilterError, NoLexicalIndexError, QueryError
from embedlib.search.fusion import FUSIONS, Rankings
from embedlib.search.query import Passage, Query, SearchOptions, TextItem

from .fakes import AsyncPlacement, FakeCorpus, Row, searcher

E = np.eye(4, dtype=np.float32)


def corpus() -> FakeCorpus:
    rows = [
        Row("a", [1, 0, 0, 0], "red apple pie", {"lang": "en", "year": 2020}),
        Row("b", [0.9, 0.1, 0, 0], "green apple", {"lang": "de", "year": 2021}),
        Row("c", [0, 1, 0, 0], "blue sky", {"lang": "en", "year": 2021}),
        Row("d", [0, 0.8, 0.2, 0], "sky and sea", {"lang": "fr", "year": 2022}),
        Row("e", [0, 0, 1, 0], "deep sea", {"lang": "en", "year": 2022}),
        Row("f", [0, 0, 0, 1], "apple tree", {"lang": "de", "year": 2020}),
    ]
    return FakeCorpus(rows)


def test_a_vector_query_answers_exact_top_k_with_the_fields_asked():
    c = corpus()
    s = searcher(c)
    hits = s.run([Query(vector=E[0], k=3, include=["text", "metadata"])], c).hits[0]
    scores = c.vectors @ E[0]
    assert [h.id for h in hits] == ["a", "b", "c"]  # c, d, e, f tie at 0: the lower id first
    assert np.allclose([h.score for h in hits], np.sort(scores)[::-1][:3])
    assert hits[0].text == "red apple pie" and hits[0].metadata == {"lang": "en", "year": 2020}
    bare = s.run([Query(vector=E[0], k=2, include=[])], c).hits[0]
    assert bare[0].text is None and bare[0].metadata is None and bare[0].vector is None


def test_exclusions_over_fetch_so_that_k_hits_remain():
    c = corpus()
    hits = searcher(c).run([Query(vector=E[0], k=3, exclude=["a", "b"])], c).hits[0]
    assert len(hits) == 3 and not {"a", "b"} & {h.id for h in hits}


def test_arithmetic_is_the_mean_of_unit_items_and_leaves_its_ids_out():
    c = corpus()
    s = searcher(c)
    hits = s.run([Query(positive=["a", "c"], negative=["e"], k=6)], c).hits[0]
    assert not {"a", "c", "e"} & {h.id for h in hits}
    want = (c.vectors[0] + c.vectors[2] - c.vectors[4]) / 3
    want /= np.linalg.norm(want)
    exact = sorted(((float(c.vectors[n] @ want), r.doc) for n, r in enumerate(c.rows)
                    if r.doc not in "ace"), reverse=True)  # fmt: skip
    assert [h.id for h in hits] == [d for _, d in exact]
    # text items are embedded; vectors are taken as given
    mixed = s.run([Query(positive=[TextItem("sky"), E[3]], k=2)], c).hits[0]
    assert {h.id for h in mixed} <= {"c", "d", "f"}


def test_filters_select_inside_the_search_and_unknown_columns_are_refused():
    c = corpus()
    s = searcher(c)
    hits = s.run([Query(vector=E[0], k=6, filter={"lang": "de"})], c).hits[0]
    assert [h.id for h in hits] == ["b", "f"]
    hits = s.run([Query(vector=E[1], k=6, filter={"year": {"in": [2021, 2022]}})], c).hits[0]
    assert {h.id for h in hits} == {"b", "c", "d", "e"}
    with pytest.raises(FilterError, match="no such metadata column"):
        s.run([Query(vector=E[0], filter={"colour": "red"})], c)
    with pytest.raises(QueryError, match="must be a value or"):  # the contract's shape
        Query(vector=E[0], filter={"lang": {"not": "en"}})


def test_queries_with_other_parameters_are_answered_each_as_if_alone():
    c = corpus()
    s = searcher(c)
    queries = [
        Query(vector=E[0], k=2),
        Query(vector=E[1], k=3, filter={"lang": "en"}),
        Query(vector=E[2], k=1, exclude=["e"]),
        Query(positive=["f"], k=2),
    ]
    together = s.run(queries, c).hits
    alone = [s.run([q], c).hits[0] for q in queries]
    assert [[h.id for h in hs] for hs in together] == [[h.id for h in hs] for hs in alone]


def chunked() -> FakeCorpus:
    """Document x in four chunks close to e0, y in one chunk, z in two."""
    rows = [
        Row("x", [1, 0.00, 0, 0], "x0", chunk=0, start=0, end=2),
        Row("x", [1, 0.01, 0, 0], "x1", chunk=1, start=2, end=4),
        Row("x", [1, 0.02, 0, 0], "x2", chunk=2, start=4, end=6),
        Row("x", [1, 0.03, 0, 0], "x3", chunk=3, start=6, end=8),
        Row("y", [0.5, 0.5, 0, 0], "y0", chunk=0, start=0, end=2),
        Row("z", [0, 1, 0, 0], "z0", chunk=0, start=0, end=2),
        Row("z", [0.2, 1, 0, 0], "z1", chunk=1, start=2, end=5),
    ]
    return FakeCorpus(rows)


def test_chunks_answer_as_documents_with_their_best_passages():
    c = chunked()
    s = searcher(c)
    hits = s.run([Query(vector=E[0], k=3, passages=2)], c).hits[0]
    assert [h.id for h in hits] == ["x", "y", "z"]
    assert hits[0].passage == Passage("x0", 0, 2, 0)
    assert [p.chunk for p in hits[0].passages or []] == [0, 1]
    assert hits[1].passages is None  # one chunk: its passage only
    chunks = s.run([Query(vector=E[0], k=3, group="chunk")], c).hits[0]
    assert [h.id for h in chunks] == ["x", "x", "x"]
    # an id stands for all its chunks: excluded whole, its vector their mean
    assert "x" not in {h.id for h in s.run([Query(vector=E[0], exclude=["x"])], c).hits[0]}


def test_a_chunked_search_goes_deeper_until_k_documents():
    c = chunked()
    s = searcher(c)
    plan = s.plan([Query(vector=E[0], k=3)])
    rounds = s.rounds(plan)
    tasks = next(rounds)
    assert tasks[0].k == 7  # min(ntotal, k x FIRST_FETCH): the whole fake index
    # one document per first round: with depth 12 > ntotal, a single round suffices
    hits = s.run([Query(vector=E[0], k=3)], c).hits[0]
    assert [h.id for h in hits] == ["x", "y", "z"]


def test_hybrid_fuses_the_two_rankings_with_the_named_fusion_and_explains():
    c = corpus()
    s = searcher(c, lexical=True)
    for fusion in ("relative", "rrf", "minmax"):
        q = Query(text="apple", k=4, fusion=fusion, explain=True)
        hits = s.run([q], c).hits[0]
        dense = s.run([Query(text="apple", k=6, mode="dense")], c).hits[0]
        lexical = s.run([Query(text="apple", k=6, mode="lexical")], c).hits[0]
        iid = {r.doc: n for n, r in enumerate(c.rows)}
        rankings = Rankings(
            [(h.score, iid[h.id]) for h in dense],
            [(h.score, iid[h.id]) for h in lexical],
            "cosine",
            1.0,
        )
        fused = FUSIONS[fusion].fuse(rankings, SearchOptions(fusion=fusion))
        assert [h.id for h in hits] == [c.rows[i].doc for _, i in fused[:4]], fusion
        for h in hits:
            dense_rank = next((n for n, g in enumerate(dense, 1) if g.id == h.id), None)
            assert (h.explain or {})["dense"] == (
                None
                if dense_rank is None
                else {"rank": dense_rank, "score": dense[dense_rank - 1].score}
            )


def test_modes_are_checked_against_the_query_and_the_index():
    c = corpus()
    with pytest.raises(QueryError, match="needs a text query"):
        searcher(c, lexical=True).run([Query(vector=E[0], mode="lexical")], c)
    with pytest.raises(NoLexicalIndexError, match="--lexical"):
        searcher(c).run([Query(text="apple", mode="hybrid")], c)
    assert searcher(c).mode(Query(text="apple")) == "dense"
    assert searcher(c, lexical=True).mode(Query(text="apple")) == "hybrid"


def test_the_event_loop_driver_and_the_batch_answer_alike():
    c = corpus()
    s = searcher(c, lexical=True)
    queries = [Query(text="apple", k=3), Query(vector=E[2], k=2, filter={"lang": "en"})]
    sync = s.run(queries, c).hits
    asynchronous = asyncio.run(s.run_async(queries, AsyncPlacement(c))).hits
    assert [[(h.id, h.score) for h in hs] for hs in sync] == [
        [(h.id, h.score) for h in hs] for hs in asynchronous
    ]
    options = SearchOptions(k=2, include=["text"])
    batch = s.run_batch(E[:3], options, c).hits
    each = [s.run([Query(vector=v, k=2, include=["text"])], c).hits[0] for v in E[:3]]
    assert [[(h.id, h.text) for h in hs] for hs in batch] == [
        [(h.id, h.text) for h in hs] for hs in each
    ]
    batch_async = asyncio.run(s.run_batch_async(E[:3], options, AsyncPlacement(c))).hits
    assert [[h.id for h in hs] for hs in batch_async] == [[h.id for h in hs] for hs in batch]


def test_query_vectors_are_checked():
    c = corpus()
    s = searcher(c)
    with pytest.raises(QueryError, match="dimension 3"):
        s.run([Query(vector=[1.0, 0.0, 0.0])], c)
    with pytest.raises(QueryError, match="zero query vector"):
        s.run([Query(vector=[0.0, 0.0, 0.0, 0.0])], c)
    with pytest.raises(QueryError, match="not in the index"):
        s.run([Query(positive=["nobody"])], c)
    huge = [3e38, 3e38, 0.0, 0.0]  # float32 holds each value; their squares overflow it
    assert (
        s.run([Query(vector=huge, k=1)], c).hits == s.run([Query(vector=[1, 1, 0, 0], k=1)], c).hits
    )


def test_an_excluded_id_the_index_does_not_hold_excludes_nothing():
    c = corpus()
    s = searcher(c)
    plain = s.run([Query(vector=[1.0, 0.0, 0.0, 0.0], k=3)], c).hits[0]
    ids = [h.id for h in plain]
    left = s.run([Query(vector=[1.0, 0.0, 0.0, 0.0], k=3, exclude=[ids[0], "nobody"])], c).hits[0]
    assert [h.id for h in left][:2] == ids[1:]


def test_nprobe_past_the_list_count_is_clamped_before_grouping():
    """1,000 queries with distinct nprobe values ran one search each (and held the event
    loop for seconds); past the list count they search the same: one search."""
    c = corpus()
    s = searcher(c, nlist=4)
    seen = []

    class Counting:
        def encode(self, texts):
            return c.encode(texts)

        def search(self, task):
            seen.append(task)
            return c.search(task)

    queries = [Query(vector=E[0], k=2, nprobe=n) for n in (4, 5, 50, 500)]
    hits = s.run(queries, Counting()).hits
    assert len(seen) == 1 and seen[0].params.nprobe == 4
    assert all([h.id for h in row] == ["a", "b"] for row in hits)
