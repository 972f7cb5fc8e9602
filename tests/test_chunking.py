"""Long documents: chunked with the model's tokenizer instead of truncated, indexed as
chunks, answered as documents with the passages that matched (exact character spans),
updated a document at a time. Real standard-library documentation, the real model."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from embedlib import EmbeddingSet, EmbedOptions, Query, RunOptions, ShardedIndex, embed_corpus
from embedlib.embed.chunking import Chunker
from embedlib.index import IndexOptions, build_index
from embedlib.index.update.upsert import update_index
from embedlib.models.encoders import TextEncoder
from tests import corpora

LOCAL = RunOptions(runner="local", progress=False)
MODULES = ["json", "shutil", "textwrap", "string", "heapq", "bisect", "fnmatch", "glob"]


@pytest.fixture(scope="module")
def long_docs(tmp_path_factory):
    root = tmp_path_factory.mktemp("long")
    docs = corpora.module_documents(MODULES)
    docs["note"] = "A short note about sorting lists."
    with open(root / "docs.jsonl", "w") as fh:
        for i, (doc_id, text) in enumerate(docs.items()):
            fh.write(json.dumps({"id": doc_id, "text": text, "shelf": i % 2}) + "\n")
    report = embed_corpus(str(root / "docs.jsonl"), str(root / "emb"), run=LOCAL)
    build_index(str(root / "emb"), str(root / "idx"), options=IndexOptions(shards=2), run=LOCAL)
    return root, docs, report


def test_chunks_fit_the_window_and_are_exact_spans(long_docs):
    root, docs, report = long_docs
    assert report.documents == len(docs) and report.chunks > 2 * len(docs)
    assert report.truncated == 0 and report.tokens_now > 0
    table = pq.read_table(str(root / "emb" / "part-00000.parquet"))
    encoder = TextEncoder("default", backend="openvino-fp32")
    lengths = encoder.token_lengths(table.column("text").to_pylist())
    assert lengths.max() <= encoder.max_seq_length  # no chunk is cut off by the model
    by_doc: dict[str, list[dict]] = {}
    for row in table.select(
        ["id", "text", "chunk", "chunk_start", "chunk_end", "shelf"]
    ).to_pylist():
        assert docs[row["id"]][row["chunk_start"] : row["chunk_end"]] == row["text"]
        by_doc.setdefault(row["id"], []).append(row)
    for doc_id, rows in by_doc.items():
        assert [r["chunk"] for r in rows] == list(range(len(rows)))
        assert rows[0]["chunk_start"] == 0 and rows[-1]["chunk_end"] >= len(docs[doc_id].rstrip())
    assert len(by_doc["note"]) == 1  # a text that fits is one chunk, the whole text
    manifest = EmbeddingSet(str(root / "emb")).manifest
    assert manifest.chunking is not None and manifest.counts["chunks"] == report.chunks


def _best_by_document(index: ShardedIndex, query: np.ndarray, table, k: int) -> list[str]:
    """The k documents the exact chunk ranking implies: each by its best chunk."""
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
    scores = vectors @ (query / np.linalg.norm(query))
    best: dict[str, float] = {}
    for doc_id, s in zip(table.column("id").to_pylist(), scores.tolist(), strict=True):
        best[doc_id] = max(best.get(doc_id, -2.0), s)
    return sorted(best, key=lambda d: -best[d])[:k]


def test_answers_are_documents_by_their_best_chunk_with_exact_passages(long_docs):
    root, docs, _ = long_docs
    index = ShardedIndex(str(root / "idx"))
    table = pq.read_table(str(root / "emb" / "part-00000.parquet"), columns=["id", "vector"])
    for text in ("shell-style wildcards for file names", "pretty printing of JSON", "a heap queue"):
        query = index.encode_text([text])[0]
        hits = index.search_text([text], k=len(docs), passages=3, mode="dense")[0]
        ids = [h.id for h in hits]
        # every document once, in the order of its best chunk (found by deeper rounds)
        assert ids == _best_by_document(index, query, table, len(docs))
        for h in hits:
            assert h.passage is not None and h.passage == (
                h.passages[0] if h.passages else h.passage
            )
            for p in h.passages or [h.passage]:
                assert docs[h.id][p.start : p.end] == p.text
            assert len(h.passages or [h.passage]) <= 3
    top = index.search_text(["shell-style wildcards for file names"], k=2)[0]
    assert {h.id for h in top} == {"fnmatch", "glob"}


def test_chunks_on_request_filters_by_document_and_arithmetic_by_document_vector(long_docs):
    root, _, _ = long_docs
    index = ShardedIndex(str(root / "idx"))
    chunks = index.search_text(["copy a directory tree"], k=6, group="chunk")[0]
    assert len(chunks) == 6 and len({(h.id, h.passage.chunk) for h in chunks}) == 6
    shelf1 = index.search_text(["copy a directory tree"], k=10, filter={"shelf": 1})[0]
    assert shelf1 and all(h.metadata["shelf"] == 1 for h in shelf1)
    assert len({h.id for h in shelf1}) == len(shelf1)
    v = index.vector("shutil")
    rows = pq.read_table(str(root / "emb" / "part-00000.parquet"), columns=["id", "vector"])
    own = np.stack([r["vector"] for r in rows.to_pylist() if r["id"] == "shutil"])
    mean = own.mean(axis=0)
    assert np.allclose(v, mean / np.linalg.norm(mean), atol=1e-5)
    similar = index.most_similar(positive=["shutil"], k=3)
    assert "shutil" not in [h.id for h in similar]  # every chunk of the input is left out
    assert index.query([Query(vector=v, k=3, exclude=["shutil"])])[0][0].id == similar[0].id


def test_long_scripts_without_spaces_and_too_many_chunks(tmp_path):
    encoder = TextEncoder("default", backend="openvino-fp32")
    from embedlib.embed.chunking import ChunkOptions

    chunker: Chunker = encoder.chunker(ChunkOptions())
    for text in ("ภาษาไทย" * 3000, "漢字かな交じり文" * 2000, "word " * 3000 + "end."):
        [spans] = chunker.split([text])
        assert spans[0].start == 0 and len(spans) > 1
        assert all(a.end <= b.start for a, b in itertools.pairwise(spans))
        assert max(chunker.tokens([text[s.start : s.end] for s in spans])) <= chunker.capacity
    (tmp_path / "c.jsonl").write_text(
        json.dumps({"id": "big", "text": "word " * 5000}) + "\n"
        + json.dumps({"id": "ok", "text": "a short text"}) + "\n"
    )  # fmt: skip
    report = embed_corpus(str(tmp_path / "c.jsonl"), str(tmp_path / "out"),
                          options=EmbedOptions(max_chunks=5), run=LOCAL)  # fmt: skip
    assert report.documents == 1 and report.quarantined == 1
    record = json.loads((tmp_path / "out" / "_quarantine" / "part-00000.jsonl").read_text())
    assert record["reason"] == "too_many_chunks" and "--max-chunks 5" in record["detail"]


def test_an_update_replaces_and_removes_whole_documents_as_a_rebuild(long_docs, tmp_path):
    root, docs, _ = long_docs
    index = str(tmp_path / "idx")
    build_index(str(root / "emb"), index, options=IndexOptions(factory="Flat", shards=2), run=LOCAL)
    changed = dict(docs)
    changed["json"] = docs["json"][: len(docs["json"]) // 2]  # shorter: fewer chunks
    del changed["glob"]
    with open(tmp_path / "v2.jsonl", "w") as fh:
        for doc_id, text in changed.items():
            shelf = MODULES.index(doc_id) % 2 if doc_id in MODULES else len(MODULES) % 2
            fh.write(json.dumps({"id": doc_id, "text": text, "shelf": shelf}) + "\n")
    report = update_index(index, str(tmp_path / "v2.jsonl"), run=LOCAL)
    assert (report.changed, report.deleted, report.added) == (1, 1, 0)
    embed_corpus(str(tmp_path / "v2.jsonl"), str(tmp_path / "emb2"), run=LOCAL)
    rebuilt = str(tmp_path / "rebuilt")
    build_index(str(tmp_path / "emb2"), rebuilt, options=IndexOptions(factory="Flat"), run=LOCAL)
    updated, fresh = ShardedIndex(index), ShardedIndex(rebuilt)
    assert updated.ntotal == fresh.ntotal  # every chunk of the changed and deleted documents went
    lex_a, lex_b = updated.manifest.lexical, fresh.manifest.lexical  # corpus-wide counts
    assert lex_a and lex_b and (lex_a.documents, lex_a.tokens) == (lex_b.documents, lex_b.tokens)
    queries = ("parse a JSON document", "find path names matching a pattern", "sorting")
    for text, mode in itertools.product(queries, ("dense", "lexical", "hybrid")):
        a = updated.search_text([text], k=5, passages=2, mode=mode)[0]
        b = fresh.search_text([text], k=5, passages=2, mode=mode)[0]
        assert [(h.id, h.passage) for h in a] == [(h.id, h.passage) for h in b]
        assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-5)


def test_clusters_and_maps_of_a_chunked_set_are_of_documents(long_docs, tmp_path):
    from embedlib import cluster_vectors, draw_map

    root, docs, _ = long_docs
    report = cluster_vectors(str(root / "emb"), str(tmp_path / "clusters"), k=3, run=LOCAL)
    clustered = EmbeddingSet(str(tmp_path / "clusters"))
    ids, vectors = clustered.read_vectors()
    assert report.documents == len(docs) and sorted(ids) == sorted(docs)
    index = ShardedIndex(str(root / "idx"))
    for doc_id, v in zip(ids, vectors, strict=True):  # the document vector, as search uses it
        assert np.allclose(v, index.vector(doc_id), atol=1e-5)
    assert not (tmp_path / "clusters" / "_documents").exists()
    drawn = draw_map(str(root / "emb"), str(tmp_path / "map"), k=2, run=LOCAL)
    assert drawn.documents == len(docs) and (tmp_path / "map" / "map.png").exists()


def test_a_tiny_last_chunk_joins_the_one_before_and_options_decide_the_output(tmp_path):
    from embedlib.embed.chunking import ChunkOptions
    from embedlib.exceptions import IncompatibleOutputError

    chunker = TextEncoder("default", backend="openvino-fp32").chunker(ChunkOptions(tokens=40))
    from embedlib.embed.chunking import Span

    short = "alpha beta gamma delta epsilon. x"
    assert chunker._tidy(short, [Span(0, 31), Span(32, 33)]) == [Span(0, 33)]  # joined
    long = " ".join(["alpha"] * 40) + " x"  # 40 tokens, then one
    cut = len(long) - 1
    assert chunker._tidy(long, [Span(0, cut - 1), Span(cut, len(long))]) == [
        Span(0, cut - 1),
        Span(cut, len(long)),
    ]  # together they would not fit the chunk size: kept apart
    text = " ".join(f"word{i}" for i in range(400)) + ". Tail."
    [spans] = chunker.split([text])
    assert all(n <= 40 for n in chunker.tokens([text[s.start : s.end] for s in spans]))
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "a", "text": text}) + "\n")
    first = embed_corpus(str(tmp_path / "c.jsonl"), str(tmp_path / "out"),
                         options=EmbedOptions(chunk_tokens=40), run=LOCAL)  # fmt: skip
    assert first.chunks == len(spans)
    with pytest.raises(IncompatibleOutputError, match="chunk_tokens"):
        embed_corpus(str(tmp_path / "c.jsonl"), str(tmp_path / "out"),
                     options=EmbedOptions(chunk_tokens=60), run=LOCAL)  # fmt: skip
