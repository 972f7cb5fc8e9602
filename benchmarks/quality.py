"""Quality rows of the suite: long-document retrieval, truncation against chunking.

Two sets from text nobody on the project wrote:
- stdlib: standard-library modules as long documents (each module's docstring, then every
  public function and class with its docstring); a member's summary line that sits past
  the first 2,000 characters is taken out and becomes a query, its module the relevant
  document and the rest of its docstring the answer (the recipe of check 10).
- reference: the Python language reference's help topics (`pydoc_data.topics`); the
  first sentence of a paragraph past the first 2,000 characters is taken out and becomes
  a query, the rest of the paragraph the answer.

Measured: doc@1, doc@10, MRR@10 (the relevant document among the top 10) and passage@10
(one of its 3 best passages holds at least half of the answer) for embedlib with
`--chunking none` (truncation) and the default chunking, beside plain
sentence-transformers over whole documents (truncated) and over 250-token windows (a
document scored by its best window), and semchunk's chunks of the same size (the
alternative splitter). The demo corpus (short texts) is checked unchanged: with chunking
every document is one chunk.
"""

from __future__ import annotations

import importlib
import inspect
import json
import random
import re
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

DEEP = 2000
STDLIB_MODULES = [
    "os",
    "shutil",
    "json",
    "re",
    "collections",
    "itertools",
    "functools",
    "datetime",
    "string",
    "textwrap",
    "random",
    "statistics",
    "socket",
    "subprocess",
    "threading",
    "logging",
    "argparse",
    "pathlib",
    "tarfile",
    "zipfile",
    "gzip",
    "hashlib",
    "base64",
    "struct",
    "codecs",
    "csv",
    "configparser",
    "urllib.parse",
    "sqlite3",
    "pickle",
    "copy",
    "heapq",
    "bisect",
    "difflib",
    "fnmatch",
    "glob",
    "tempfile",
    "time",
    "calendar",
    "locale",
    "inspect",
    "ast",
    "tokenize",
    "traceback",
    "warnings",
    "contextlib",
    "abc",
    "typing",
    "enum",
    "decimal",
    "fractions",
    "operator",
    "pprint",
    "uuid",
    "ipaddress",
    "mimetypes",
    "html.parser",
    "smtplib",
    "selectors",
    "signal",
    "platform",
    "shlex",
    "cmd",
    "pdb",
    "timeit",
    "doctest",
    "weakref",
    "queue",
    "sched",
    "concurrent.futures",
    "io",
    "tracemalloc",
    "filecmp",
    "shelve",
    "plistlib",
    "getpass",
    "webbrowser",
    "graphlib",
    "zoneinfo",
]
Query = dict[str, Any]  # {"query", "relevant", "answer": [start, end]}


def stdlib_set(max_queries: int = 300, seed: int = 11) -> tuple[dict[str, str], list[Query]]:
    docs: dict[str, str] = {}
    queries: list[Query] = []
    for name in STDLIB_MODULES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(name)
        parts = [f"{name}\n\n{inspect.getdoc(module) or ''}\n"]
        pos = len(parts[0])
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            doc = inspect.getdoc(obj)
            if not doc or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            summary, _, body = doc.strip().partition("\n")
            head = f"\n{name}.{attr}\n"
            if pos > DEEP and len(summary.split()) >= 5 and len(body.split()) >= 15:
                block = head + "    " + body.strip().replace("\n", "\n    ") + "\n"
                queries.append({"query": summary.strip(), "relevant": name,
                                "answer": [pos + len(head), pos + len(block)]})  # fmt: skip
            else:
                block = head + "    " + doc.strip().replace("\n", "\n    ") + "\n"
            parts.append(block)
            pos += len(block)
        docs[name] = "".join(parts)
    return docs, _unambiguous(queries, max_queries, seed)


def reference_set(max_queries: int = 300, seed: int = 11) -> tuple[dict[str, str], list[Query]]:
    from pydoc_data.topics import topics

    docs: dict[str, str] = {}
    queries: list[Query] = []
    for topic, text in sorted(topics.items()):
        out, pos = [], 0
        for para in text.split("\n\n"):
            first = re.match(r"\s*([^.]{30,200}\.)\s", para)
            words = len(para.split())
            if pos > DEEP and first and words >= 25 and len(first.group(1).split()) >= 6:
                rest = para[first.end() :]
                queries.append({"query": " ".join(first.group(1).split()), "relevant": topic,
                                "answer": [pos, pos + len(rest)]})  # fmt: skip
                para = rest
            out.append(para)
            pos += len(para) + 2
        docs[topic] = "\n\n".join(out)
    return docs, _unambiguous(queries, max_queries, seed)


def _unambiguous(queries: list[Query], n: int, seed: int) -> list[Query]:
    seen: dict[str, int] = {}
    for q in queries:
        seen[q["query"].lower()] = seen.get(q["query"].lower(), 0) + 1
    kept = [q for q in queries if seen[q["query"].lower()] == 1]
    random.Random(seed).shuffle(kept)
    return kept[:n]


def metrics(
    answers: list[list[tuple[str, list[tuple[int, int]]]]], queries: list[Query]
) -> dict[str, float]:
    """doc@1, doc@10, MRR@10 and passage@10 of ranked (document, passage spans) answers."""
    d1 = d10 = mrr = p10 = 0.0
    for q, ranked in zip(queries, answers, strict=True):
        ids = [doc for doc, _ in ranked[:10]]
        if ids and ids[0] == q["relevant"]:
            d1 += 1
        if q["relevant"] in ids:
            rank = ids.index(q["relevant"])
            d10 += 1
            mrr += 1 / (rank + 1)
            a, b = q["answer"]
            for s, e in ranked[rank][1][:3]:
                inter = max(0, min(b, e) - max(a, s))
                if inter > 0 and inter >= 0.5 * min(e - s, b - a):
                    p10 += 1
                    break
    n = len(queries)
    return {"doc@1": d1 / n, "doc@10": d10 / n, "MRR@10": mrr / n, "passage@10": p10 / n}


def _embedlib(work: Path, name: str, docs: dict[str, str], queries: list[Query],
              chunking: str, modes: tuple[str, ...] = ("dense",),
              ) -> tuple[dict[str, dict[str, float]], float, int]:  # fmt: skip
    from embedlib import EmbedOptions, RunOptions, ShardedIndex, build_index, embed_corpus

    run = RunOptions(runner="local", progress=False)
    corpus = work / f"{name}.jsonl"
    corpus.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in docs.items()))
    start = time.perf_counter()
    report = embed_corpus(str(corpus), str(work / f"{name}-{chunking}-emb"),
                          options=EmbedOptions(chunking=chunking), run=run)  # fmt: skip
    seconds = time.perf_counter() - start
    build_index(str(work / f"{name}-{chunking}-emb"), str(work / f"{name}-{chunking}-idx"), run=run)
    index = ShardedIndex(str(work / f"{name}-{chunking}-idx"))
    out = {}
    for mode in modes:
        hits = index.search_text([q["query"] for q in queries], 10, passages=3, include=(),
                                 mode=mode)  # fmt: skip
        answers = [[(h.id, [(p.start, p.end) for p in (h.passages or ([h.passage] if h.passage else []))])
                    for h in row] for row in hits]  # fmt: skip
        out[mode] = metrics(answers, queries)
    return out, seconds, report.chunks


COMPRESSIONS = (("sq8", "int8"), ("pq", "int8"), ("binary", "int8"), ("binary", "float16"))


def _compressed(work: Path, name: str, queries: list[Query]) -> dict[str, dict[str, float]]:
    """The chunked set indexed with each compression (codes in RAM, vectors on disk,
    rescored), searched dense and hybrid: the rows beside float32's."""
    from embedlib import IndexOptions, RunOptions, ShardedIndex, build_index

    run = RunOptions(runner="local", progress=False)
    out = {}
    for compress, store in COMPRESSIONS:
        target = work / f"{name}-auto-{compress}-{store}-idx"
        report = build_index(str(work / f"{name}-auto-emb"), str(target), run=run,
                             options=IndexOptions(compress=compress, store_vectors=store))  # fmt: skip
        index = ShardedIndex(str(target))
        for mode in ("dense", "hybrid"):
            hits = index.search_text([q["query"] for q in queries], 10, passages=3,
                                     include=(), mode=mode)  # fmt: skip
            answers = [[(h.id, [(p.start, p.end) for p in (h.passages or ([h.passage] if h.passage else []))])
                        for h in row] for row in hits]  # fmt: skip
            key = f"--compress {compress} --store-vectors {store} ({report.factory}, {report.search_params.to_dict()})"
            out[f"{key}, mode {mode}"] = metrics(answers, queries)
    return out


def _plain(docs: dict[str, str], queries: list[Query], spans: dict[str, list[tuple[int, int]]],
           model: Any) -> dict[str, float]:  # fmt: skip
    """Plain sentence-transformers over the given spans of each document, a document
    scored by its best span (one span per document: the whole text, truncated)."""
    owners = [(d, s) for d, ss in spans.items() for s in ss]
    texts = [docs[d][a:b] for d, (a, b) in owners]
    x = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    q = model.encode([q["query"] for q in queries], batch_size=64, normalize_embeddings=True,
                     convert_to_numpy=True)  # fmt: skip
    answers = []
    for row in q @ x.T:
        best: dict[str, list[tuple[float, tuple[int, int]]]] = {}
        for n in np.argsort(-row):
            doc, span = owners[n]
            best.setdefault(doc, []).append((float(row[n]), span))
            if len(best) >= 10 and all(
                len(v) >= 3 or len(spans[d]) <= len(v) for d, v in best.items()
            ):
                break
        ranked = sorted(best.items(), key=lambda kv: -kv[1][0][0])[:10]
        answers.append([(d, [s for _, s in v[:3]]) for d, v in ranked])
    return metrics(answers, queries)


def _bm25s(docs: dict[str, str], queries: list[Query],
           spans: dict[str, list[tuple[int, int]]]) -> dict[str, float]:  # fmt: skip
    """Plain bm25s (English stop words, Snowball stemmer) over the spans, a document
    scored by its best span."""
    import bm25s
    import Stemmer

    owners = [(d, s) for d, ss in spans.items() for s in ss]
    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([docs[d][a:b] for d, (a, b) in owners], stopwords="en",
                                   stemmer=stemmer, show_progress=False), show_progress=False)  # fmt: skip
    tokens = bm25s.tokenize([q["query"] for q in queries], stopwords="en", stemmer=stemmer,
                            show_progress=False)  # fmt: skip
    found, _ = retriever.retrieve(tokens, k=min(100, len(owners)), show_progress=False)
    answers = []
    for row in found:
        best: dict[str, list[tuple[int, int]]] = {}
        for n in row.tolist():
            best.setdefault(owners[n][0], []).append(owners[n][1])
        answers.append(list(best.items())[:10])
    return metrics(answers, queries)


def _windows(
    docs: dict[str, str], tokenizer: Any, size: int = 250
) -> dict[str, list[tuple[int, int]]]:
    """Character spans of consecutive `size`-token windows."""
    out = {}
    for doc, text in docs.items():
        offsets = tokenizer.encode(text, add_special_tokens=False).offsets
        out[doc] = [(offsets[i][0], offsets[min(i + size, len(offsets)) - 1][1])
                    for i in range(0, len(offsets), size)] or [(0, len(text))]  # fmt: skip
    return out


def _semchunk(
    docs: dict[str, str], tokenizer: Any, size: int
) -> tuple[dict[str, list[tuple[int, int]]], float]:
    import semchunk

    counter = lambda s: len(tokenizer.encode(s, add_special_tokens=False).ids)  # noqa: E731
    chunker = semchunk.chunkerify(counter, size)
    start = time.perf_counter()
    spans = {doc: [tuple(o) for o in chunker(text, offsets=True)[1]] for doc, text in docs.items()}
    return spans, time.perf_counter() - start  # type: ignore[return-value]


def quality_rows(work: Path, max_docs: int = 10_000) -> list[list[str]]:
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    from embedlib.embed.chunking import Chunker
    from embedlib.models.fingerprint import resolve_model_path

    model = SentenceTransformer(resolve_model_path("default"), device="cpu")
    tokenizer = Tokenizer.from_file(str(Path(resolve_model_path("default")) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    rows: list[list[str]] = []

    def fmt(m: dict[str, float], passages: bool = True) -> str:
        p = f", passage@10 {m['passage@10']:.3f}" if passages else ""
        return f"doc@1 {m['doc@1']:.3f}, doc@10 {m['doc@10']:.3f}, MRR@10 {m['MRR@10']:.3f}{p}"

    for name, build in (("stdlib", stdlib_set), ("reference", reference_set)):
        docs, queries = build()
        if len(docs) > max_docs:  # a smaller run: the first documents and their queries
            docs = dict(list(docs.items())[:max_docs])
            queries = [q for q in queries if q["relevant"] in docs]
        what = f"{name} set ({len(docs)} documents, {len(queries)} queries)"
        ms, s, n = _embedlib(work, name, docs, queries, "none")
        rows.append(
            [
                f"{what}: embedlib, --chunking none (truncated), mode dense",
                f"{s:.1f} s",
                "",
                f"{n} rows",
                "",
                fmt(ms["dense"], False),
            ]
        )
        ms, s, n = _embedlib(work, name, docs, queries, "auto", ("dense", "lexical", "hybrid"))
        for mode, m in ms.items():
            default = " (default)" if mode == "hybrid" else ""
            rows.append([f"{what}: embedlib, chunked (default), mode {mode}{default}",
                         f"{s:.1f} s" if mode == "dense" else "", "", f"{n} chunks", "",
                         fmt(m)])  # fmt: skip
        for key, m in _compressed(work, name, queries).items():
            rows.append([f"{what}: embedlib, chunked, {key}", "", "", "", "", fmt(m)])
        whole = {d: [(0, len(t))] for d, t in docs.items()}
        rows.append(
            [
                f"{what}: plain sentence-transformers, whole documents (truncated)",
                "",
                "",
                "",
                "",
                fmt(_plain(docs, queries, whole, model), False),
            ]
        )
        windows = _windows(docs, tokenizer)
        rows.append(
            [
                f"{what}: plain sentence-transformers, 250-token windows",
                "",
                "",
                "",
                "",
                fmt(_plain(docs, queries, windows, model)),
            ]
        )
        rows.append(
            [
                f"{what}: plain bm25s, 250-token windows",
                "",
                "",
                "",
                "",
                fmt(_bm25s(docs, queries, windows)),
            ]
        )
        spans, secs = _semchunk(docs, tokenizer, 254)
        rows.append(
            [
                f"{what}: semchunk chunks (254 tokens), sentence-transformers",
                f"split {secs:.2f} s",
                "",
                f"{sum(map(len, spans.values()))} chunks",
                "",
                fmt(_plain(docs, queries, spans, model)),
            ]
        )
        chunker = Chunker(tokenizer, capacity=254, overlap=0, max_chunks=10_000)
        start = time.perf_counter()
        chunks = sum(map(len, chunker.split(list(docs.values()))))
        rows.append(
            [
                f"{what}: semantic-text-splitter (embedlib's), split only",
                f"split {time.perf_counter() - start:.2f} s",
                "",
                f"{chunks} chunks",
                "",
                "",
            ]
        )
    if max_docs >= 1000:
        rows.append(_demo_row(work))
    return rows  # fmt: skip


def _demo_row(work: Path) -> list[str]:
    """The short-text demo corpus embedded truncated and chunked: the same vectors."""
    import pyarrow.parquet as pq

    from embedlib import EmbeddingSet, EmbedOptions, RunOptions, embed_corpus
    from embedlib.embed.stdlib_docs import stdlib_corpus

    run = RunOptions(runner="local", progress=False)
    pq.write_table(stdlib_corpus(), work / "demo.parquet")
    sets = {}
    for chunking in ("none", "auto"):
        out = str(work / f"demo-{chunking}")
        embed_corpus(
            str(work / "demo.parquet"), out, options=EmbedOptions(chunking=chunking), run=run
        )
        ids, vectors = EmbeddingSet(out).read_vectors()
        sets[chunking] = dict(zip(ids, vectors, strict=True))
    diff = max(float(np.abs(v - sets["auto"][i]).max()) for i, v in sets["none"].items())
    chunks = len(sets["auto"])
    return [
        f"demo corpus ({len(sets['none'])} short documents): chunked against truncated",
        "",
        "",
        f"{chunks} chunks",
        "",
        f"same vectors (max difference {diff:.1e}): same answers",
    ]
