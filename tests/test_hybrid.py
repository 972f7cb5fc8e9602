"""Hybrid retrieval: a BM25 index beside the vectors in every shard, scored with
corpus-wide statistics (sharding changes no answer), fused with the dense ranking in the
one searcher. Real standard-library documentation, the real model, bm25s as the
reference for the lexical scores."""

from __future__ import annotations

import json

import bm25s
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import Stemmer

from embedlib import NoLexicalIndexError, Query, QueryError, RunOptions, ShardedIndex, embed_corpus
from embedlib.index import IndexOptions, build_index
from embedlib.search.fusion import FUSIONS, Rankings
from embedlib.search.lexical import MAX_QUERY_TERMS, Analyzer
from embedlib.search.query import SearchOptions
from embedlib.search.searcher import FUSION_FETCH, FUSION_WINDOW
from tests import corpora

LOCAL = RunOptions(runner="local", progress=False)
MODULES = ["json", "shutil", "textwrap", "string", "heapq", "bisect", "fnmatch", "glob", "csv"]
QUERIES = [
    "shell-style wildcards for file names",
    "copyfileobj copies the contents of a file-like object",
    "heappush heappop",
    "Dedent: remove any common leading whitespace",
    "json.dumps(obj, indent=4)",
    "bisect_left insertion point",
    "csv dialect quoting delimiter",
    "Template strings $substitution",
]


@pytest.fixture(scope="module")
def indexes(tmp_path_factory):
    root = tmp_path_factory.mktemp("hybrid")
    docs = corpora.module_documents(MODULES)
    with open(root / "docs.jsonl", "w") as fh:
        for i, (doc_id, text) in enumerate(docs.items()):
            fh.write(json.dumps({"id": doc_id, "text": text, "shelf": i % 2}) + "\n")
    embed_corpus(str(root / "docs.jsonl"), str(root / "emb"), run=LOCAL)
    for name, options in {
        "three": IndexOptions(factory="Flat", shards=3),
        "one": IndexOptions(factory="Flat", shards=1),
        "dense-only": IndexOptions(factory="Flat", lexical=False),
    }.items():
        build_index(str(root / "emb"), str(root / name), options=options, run=LOCAL)
    return root, docs


def test_lexical_answers_are_the_same_for_any_sharding_and_are_bm25s_scores(indexes):
    root, _ = indexes
    three, one = ShardedIndex(str(root / "three")), ShardedIndex(str(root / "one"))
    assert three.manifest.lexical is not None and len(three.manifest.shards) == 3
    a = three.search_text(QUERIES, 10, mode="lexical", group="chunk")
    b = one.search_text(QUERIES, 10, mode="lexical", group="chunk")
    for x, y in zip(a, b, strict=True):
        assert len(x) == len(y) > 0
        assert [(h.id, h.passage.chunk) for h in x] == [(h.id, h.passage.chunk) for h in y]
        assert np.allclose([h.score for h in x], [h.score for h in y], atol=1e-4)
    # bm25s over the same rows, with the same analysis: the same scores (Lucene's BM25)
    (docs_file,) = (root / "one" / "versions").glob("*/docs-00000.parquet")
    rows = pq.read_table(docs_file, columns=["id", "chunk", "text"]).to_pylist()
    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([r["text"] for r in rows], stopwords="en", stemmer=stemmer,
                                   show_progress=False), show_progress=False)  # fmt: skip
    row_of = {(r["id"], r["chunk"]): n for n, r in enumerate(rows)}
    for text, hits in zip(QUERIES, b, strict=True):
        tokens = bm25s.tokenize([text], stopwords="en", stemmer=stemmer, return_ids=False,
                                show_progress=False)[0]  # fmt: skip
        scores = retriever.get_scores(tokens)
        best = np.sort(scores[scores > 0])[::-1][:10]  # rows sharing no term are not hits
        assert np.allclose([h.score for h in hits], best, atol=1e-4)
        for h in hits:
            assert abs(scores[row_of[(h.id, h.passage.chunk)]] - h.score) < 1e-4


def test_hybrid_is_the_default_and_fuses_the_global_rankings(indexes):
    root, _ = indexes
    index = ShardedIndex(str(root / "three"))
    k = 5
    for text in QUERIES[:4]:
        default = index.search_text([text], k, group="chunk", explain=True)[0]
        hybrid = index.search_text([text], k, group="chunk", mode="hybrid")[0]
        assert [h.id for h in default] == [h.id for h in hybrid]
        depth = max(k * FUSION_FETCH, FUSION_WINDOW)
        dense = index.search_text([text], depth, group="chunk", mode="dense")[0]
        lexical = index.search_text([text], depth, group="chunk", mode="lexical")[0]
        iid = {(h.id, h.passage.chunk): n for n, h in enumerate(dense + lexical)}
        by_iid = {v: key for key, v in iid.items()}
        lists = [[(h.score, iid[(h.id, h.passage.chunk)]) for h in hs] for hs in (dense, lexical)]
        attainable = index.searcher.lexical.weigh(text)[1]
        rankings = Rankings(*lists, metric="cosine", attainable=attainable)
        fused = FUSIONS["relative"].fuse(rankings, SearchOptions(alpha=0.5))
        assert [(h.id, h.passage.chunk) for h in default] == [by_iid[i] for _, i in fused[:k]]
        assert np.allclose([h.score for h in default], [s for s, _ in fused[:k]])
        rrf = index.search_text([text], k, group="chunk", fusion="rrf")[0]
        fused = FUSIONS["rrf"].fuse(rankings, SearchOptions(rrf_k=60))
        assert [(h.id, h.passage.chunk) for h in rrf] == [by_iid[i] for _, i in fused[:k]]
        for h in default:  # explain: where the hit stood in each ranking
            ranks = {
                kind: next((n for n, g in enumerate(hs, 1)
                            if (g.id, g.passage.chunk) == (h.id, h.passage.chunk)), None)
                for kind, hs in (("dense", dense), ("lexical", lexical))
            }  # fmt: skip
            got = {kind: (e or {}).get("rank") for kind, e in h.explain.items()}
            assert got == ranks
        # alpha = 1: the dense order; alpha = 0: the lexical order
        only_dense = index.search_text([text], k, group="chunk", alpha=1.0)[0]
        only_lexical = index.search_text([text], k, group="chunk", alpha=0.0)[0]
        assert [h.id for h in only_dense] == [h.id for h in dense[:k]]
        matched = [h.id for h in only_lexical if h.score > 0]  # then the rest, at 0
        assert matched == [h.id for h in lexical[:k]][: len(matched)] and matched
        minmax = index.search_text([text], k, group="chunk", fusion="minmax", alpha=0.0)[0]
        # (min-max scaling gives a list's last row 0, as it gives rows not in the list)
        positive = [h.id for h in minmax if h.score > 0]
        assert positive == [h.id for h in lexical[: len(positive)]] and positive
    # documents by their best fused chunk: k distinct documents with exact passages
    docs = index.search_text(QUERIES, k, passages=2)
    assert all(len({h.id for h in hits}) == len(hits) == k for hits in docs)


def test_filters_and_exclusions_apply_inside_both_rankings(indexes):
    root, _ = indexes
    index = ShardedIndex(str(root / "three"))
    for mode in ("lexical", "hybrid"):
        hits = index.search_text(["file names and paths"], 4, mode=mode, filter={"shelf": 1})[0]
        assert hits and all(h.metadata["shelf"] == 1 for h in hits)
        if mode == "lexical":  # filtered inside the search: the shelf's best, not fewer
            every = index.search_text(["file names and paths"], 50, mode=mode)[0]
            assert [h.id for h in hits] == [h.id for h in every if h.metadata["shelf"] == 1][:4]
        top = index.search_text(["shell-style wildcards"], 3, mode=mode)[0]
        rest = index.search_text(["shell-style wildcards"], 3, mode=mode, exclude=[top[0].id])[0]
        assert top[0].id not in [h.id for h in rest] and len(rest) == 3


def test_lexical_input_is_plain_text_and_modes_are_checked(indexes):
    root, _ = indexes
    index = ShardedIndex(str(root / "three"))
    assert index.search_text(["the and of a to"], 5, mode="lexical") == [[]]  # stop words only
    assert len(index.search_text(["the and of a to"], 5)[0]) == 5  # hybrid: the dense side
    odd = 'json.dumps("x"): AND OR NOT [a] (b) {c} -d +e ~f *g? title:"x" \\ / ^2'
    assert index.search_text([odd], 5, mode="lexical")[0][0].id == "json"
    long_query = " ".join(f"word{i}" for i in range(600)) + " heappush"
    assert len(Analyzer().query_terms(long_query)) == MAX_QUERY_TERMS
    assert len(index.search_text([long_query], 3)[0]) == 3
    with pytest.raises(QueryError, match="needs a text query"):
        index.query([Query(vector=index.vector("json"), mode="lexical")])
    with pytest.raises(QueryError, match="mode: Input should be"):
        Query(text="x", mode="bm25")  # type: ignore[arg-type]
    with pytest.raises(QueryError, match="alpha"):
        Query(text="x", alpha=1.5)
    with pytest.raises(NoLexicalIndexError, match="--lexical"):
        ShardedIndex(str(root / "dense-only")).search_text(["json"], 3, mode="hybrid")
    dense_only = ShardedIndex(str(root / "dense-only"))
    assert dense_only.manifest.lexical is None  # and text queries default to dense there
    assert [h.id for h in dense_only.search_text(["json"], 3)[0]] == [
        h.id for h in index.search_text(["json"], 3, mode="dense")[0]
    ]
    with pytest.raises(ValueError, match="klingon"):
        IndexOptions(lexical_language="klingon")


def test_other_languages_and_raw_tokens(tmp_path):
    """French analysis stems French words; "none" keeps raw tokens; vectors without text
    get no lexical part."""
    assert Analyzer("french").query_terms("les chanteuses chantaient") == ["chanteux", "chant"]
    assert Analyzer("none").query_terms("The Running dogs") == ["the", "running", "dogs"]
    rng = np.random.default_rng(0)
    table = pa.table({"id": [f"v{i}" for i in range(50)],
                      "vector": list(rng.standard_normal((50, 8)).astype(np.float32))})  # fmt: skip
    pq.write_table(table, tmp_path / "v.parquet")
    build_index(str(tmp_path / "v.parquet"), str(tmp_path / "idx"), run=LOCAL)
    assert ShardedIndex(str(tmp_path / "idx")).manifest.lexical is None


def test_a_first_place_dense_hit_keeps_first_place_against_a_weak_lexical_match(tmp_path):
    """Relative fusion: "how to train a neural net" shares only "train" with 25 notes
    about train timetables and no word with "machine learning tutorial", which dense
    ranks first by far; reciprocal-rank fusion puts a timetable first (a document in
    both lists), relative fusion keeps the tutorial first."""
    from embedlib import EmbedOptions

    run = RunOptions(runner="local", progress=False)
    topics = ["gardening", "tax forms", "train timetables", "soup recipes", "knitting",
              "bird watching", "car repair", "chess openings"]  # fmt: skip
    texts = ["cat video", "machine learning tutorial", "buy cheap shoes"] + [
        f"note {i} about {topic}" for i, topic in enumerate(topics * 25)
    ]
    (tmp_path / "docs.jsonl").write_text(
        "".join(json.dumps({"id": f"doc{i}", "text": t}) + "\n" for i, t in enumerate(texts))
    )
    embed_corpus(
        str(tmp_path / "docs.jsonl"), str(tmp_path / "emb"), options=EmbedOptions(), run=run
    )
    build_index(str(tmp_path / "emb"), str(tmp_path / "idx"), run=run)
    index = ShardedIndex(str(tmp_path / "idx"))
    query = ["how to train a neural net"]
    assert index.search_text(query, 1, mode="dense")[0][0].id == "doc1"
    assert "train" in index.search_text(query, 1, fusion="rrf")[0][0].text
    assert index.search_text(query, 1)[0][0].id == "doc1"  # the default: relative


def test_a_hybrid_ranking_does_not_depend_on_k(tmp_path):
    """A document missing from one ranking scores 0 there, so fusing lists only k deep let
    k change the top hit: with 50 notes about neural networks, "how to train a neural net"
    put one first at k=1 and another at k=3. Both lists go at least FUSION_WINDOW deep:
    every k up to it gives a prefix of one ranking, with the same scores, in every fusion."""
    topics = ["gardening", "tax forms", "train timetables", "soup recipes", "neural networks",
              "running shoes"]  # fmt: skip
    texts = ["cat video", "machine learning tutorial", "buy cheap shoes"] + [
        f"a note about {topics[i % 6]} number {i}" for i in range(300)
    ]
    (tmp_path / "docs.jsonl").write_text(
        "".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts))
    )
    embed_corpus(str(tmp_path / "docs.jsonl"), str(tmp_path / "emb"), run=LOCAL)
    build_index(
        str(tmp_path / "emb"), str(tmp_path / "idx"), options=IndexOptions(shards=2), run=LOCAL
    )
    index = ShardedIndex(str(tmp_path / "idx"))
    deepest = FUSION_WINDOW // FUSION_FETCH
    for fusion in ("relative", "rrf", "minmax"):
        for query in ("how to train a neural net", "cheap running shoes", "soup"):
            full = [(h.id, h.score) for h in index.search_text([query], deepest, fusion=fusion)[0]]
            for k in (1, 2, 3, 5, 10, 20):
                got = [(h.id, h.score) for h in index.search_text([query], k, fusion=fusion)[0]]
                assert got == full[:k], (fusion, query, k)
