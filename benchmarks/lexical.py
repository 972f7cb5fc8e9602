"""Lexical search (`python -m benchmarks lexical`): the engines compared, and what the
lexical part costs a build.

Engines: bm25s (what embedlib's lexical part uses for analysis and scores) against
tantivy, on the chunks of the long-document set (the standard library's docstrings):
build time, query latency (one query at a time, p50), quality by best chunk, and size.
The share of the index build the lexical part takes: the long-document set, and 200k
short texts (lines of the standard library's comments and docstrings) with 384-d
vectors.
"""

from __future__ import annotations

import json
import re
import sysconfig
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.quality import metrics, stdlib_set

WORD = re.compile(r"[^\w\s]")


def _chunks(docs: dict[str, str]) -> list[tuple[str, int, int]]:
    """(document, start, end) of embedlib's chunks (the model's tokenizer, 254 tokens)."""
    from tokenizers import Tokenizer

    from embedlib.embed.chunking import Chunker
    from embedlib.models.fingerprint import resolve_model_path

    tokenizer = Tokenizer.from_file(str(Path(resolve_model_path("default")) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    chunker = Chunker(tokenizer, capacity=254, overlap=0, max_chunks=10_000)
    spans = chunker.split(list(docs.values()))
    return [(d, s.start, s.end) for d, ss in zip(docs, spans, strict=True) for s in ss]


def _ranked(owners: list[tuple[str, int, int]], rows: list[list[int]]) -> list[Any]:
    """Documents by their best chunk, with up to 3 passages each."""
    answers = []
    for row in rows:
        best: dict[str, list[tuple[int, int]]] = {}
        for n in row:
            doc, a, b = owners[n]
            best.setdefault(doc, []).append((a, b))
        answers.append(list(best.items())[:10])
    return answers


def _limited(max_docs: int) -> tuple[dict[str, str], list[Any]]:
    docs, queries = stdlib_set()
    if len(docs) > max_docs:  # a smaller run: the first documents and their queries
        docs = dict(list(docs.items())[:max_docs])
        queries = [q for q in queries if q["relevant"] in docs]
    return docs, queries


def engine_rows(max_docs: int = 10_000) -> list[list[str]]:
    import bm25s
    import Stemmer
    import tantivy

    docs, queries = _limited(max_docs)
    owners = _chunks(docs)
    texts = [docs[d][a:b] for d, a, b in owners]
    qtexts = [q["query"] for q in queries]
    depth = min(100, len(texts))
    rows = []
    stemmer = Stemmer.Stemmer("english")

    start = time.perf_counter()
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False),
                    show_progress=False)  # fmt: skip
    built = time.perf_counter() - start
    size = sum(a.nbytes for a in retriever.scores.values() if isinstance(a, np.ndarray))
    found, lat = [], []
    for q in qtexts:
        t = time.perf_counter()
        tokens = bm25s.tokenize([q], stopwords="en", stemmer=stemmer, show_progress=False)
        ids, _ = retriever.retrieve(tokens, k=depth, show_progress=False)
        lat.append(time.perf_counter() - t)
        found.append(ids[0].tolist())
    m = metrics(_ranked(owners, found), queries)
    rows.append(["bm25s 0.3.16 (English stop words, Snowball stemmer)", f"build {built:.2f} s",
                 "", f"query p50 {np.median(lat) * 1000:.2f} ms", f"{size / 1e6:.2f} MB",
                 _fmt(m)])  # fmt: skip

    start = time.perf_counter()
    schema = tantivy.SchemaBuilder().add_text_field("body", stored=False, tokenizer_name="en_stem")
    schema = schema.add_integer_field("n", stored=True, indexed=False, fast=True).build()
    index = tantivy.Index(schema)
    writer = index.writer(heap_size=100_000_000, num_threads=1)
    for n, text in enumerate(texts):
        writer.add_document(tantivy.Document(body=text, n=n))
    writer.commit()
    writer.wait_merging_threads()
    index.reload()
    built = time.perf_counter() - start
    searcher = index.searcher()
    found, lat = [], []
    for q in qtexts:
        t = time.perf_counter()
        query = index.parse_query(WORD.sub(" ", q) or "x", ["body"])
        hits = searcher.search(query, depth).hits
        found.append([searcher.doc(a)["n"][0] for _, a in hits])
        lat.append(time.perf_counter() - t)
    m = metrics(_ranked(owners, found), queries)
    rows.append(["tantivy 0.27 (en_stem: lower case, English stemmer, no stop words)",
                 f"build {built:.2f} s", "", f"query p50 {np.median(lat) * 1000:.2f} ms",
                 "in RAM", _fmt(m)])  # fmt: skip
    return [[f"lexical engines, {len(texts)} chunks of {len(docs)} documents, {len(queries)} "
             f"queries: " + r[0], *r[1:]] for r in rows]  # fmt: skip


def _fmt(m: dict[str, float]) -> str:
    return f"doc@1 {m['doc@1']:.3f}, doc@10 {m['doc@10']:.3f}, passage@10 {m['passage@10']:.3f}"


def short_texts(n: int) -> list[str]:
    """Lines of the standard library's comments and docstrings, 4 words or more."""
    out: list[str] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("**/*.py")):
        if "site-packages" in path.parts:
            continue
        for line in path.read_text(errors="replace").splitlines():
            line = line.strip().lstrip("#").strip().strip('"').strip()
            if len(line.split()) >= 4 and not line.startswith(("import ", "from ", "def ")):
                out.append(line)
                if len(out) == n:
                    return out
    return out


def build_share_rows(work: Path, n_short: int = 200_000, max_docs: int = 10_000) -> list[list[str]]:
    """The lexical phase's share of `embedlib index` on two sets."""
    from embedlib import EmbedOptions, RunOptions, build_index, embed_corpus
    from embedlib.index import IndexOptions
    from embedlib.sets.embedding_set import write_vector_set

    run = RunOptions(runner="local", progress=False)
    rows = []
    docs, _ = _limited(max_docs)
    corpus = work / "lexical-long.jsonl"
    corpus.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in docs.items()))
    embed_corpus(str(corpus), str(work / "lexical-long-emb"), options=EmbedOptions(), run=run)
    texts = short_texts(n_short)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((len(texts), 384)).astype(np.float32)
    write_vector_set(str(work / "lexical-short-emb"), [str(i) for i in range(len(texts))], x,
                     name="random", metric="cosine", source={"url": "stdlib lines"},
                     columns={"text": texts}, text_column="text")  # fmt: skip
    for name, what in (("long", f"long documents ({len(docs)})"),
                       ("short", f"{len(texts) // 1000}k short texts, 384-d")):  # fmt: skip
        totals = {}
        for lexical in (False, True):
            start = time.perf_counter()
            report = build_index(str(work / f"lexical-{name}-emb"),
                                 str(work / f"lexical-{name}-idx-{lexical}"),
                                 options=IndexOptions(lexical=lexical), run=run)  # fmt: skip
            totals[lexical] = (time.perf_counter() - start, report)
        (plain, _), (both, report) = totals[False], totals[True]
        lex = report.seconds.get("lexical", 0.0)
        rows.append([f"lexical part of the index build, {what}: {report.factory}",
                     f"{both:.1f} s with, {plain:.1f} s without", f"{both / plain:.2f}x",
                     f"lexical phase {lex:.2f} s", f"{lex / both:.1%} of the build", ""])  # fmt: skip
    return rows
