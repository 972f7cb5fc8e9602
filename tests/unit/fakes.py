"""Fakes for driving the `Searcher` without FAISS shards, a model or Ray: a corpus of
rows (documents or chunks) with vectors, text and metadata; its docs lookup; a brute
force placement (exact dense search, term-count lexical search, filters on metadata);
and the manifest fields the searcher reads."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa

from embedlib.exceptions import QueryError
from embedlib.index.store.docs import DocRow
from embedlib.index.store.version import SearchParams
from embedlib.search.lexical import LexicalTask
from embedlib.search.searcher import Searcher, Task, TaskResult
from embedlib.search.shards import SearchTask


@dataclass
class Row:
    doc: str  # document id
    vector: list[float]
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    chunk: int | None = None  # chunk number (chunked corpora)
    start: int = 0
    end: int = 0


class FakeCorpus:
    """Rows with int64 ids 0..n-1, unit-length vectors (cosine)."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows
        x = np.array([r.vector for r in rows], dtype=np.float32)
        self.vectors = x / np.linalg.norm(x, axis=1, keepdims=True)
        self.chunked = any(r.chunk for r in rows)
        self.metadata_columns = frozenset(c for r in rows for c in r.metadata)
        self.metadata_types = {
            c: pa.array([r.metadata.get(c) for r in rows]).type for c in self.metadata_columns
        }

    # -- the DocsLookup the searcher uses ------------------------------------------------
    def iids_of(self, doc_id: str, *, missing_ok: bool = False) -> list[int]:
        found = [n for n, r in enumerate(self.rows) if r.doc == doc_id]
        if not found and not missing_ok:
            raise QueryError(f"id {doc_id!r} is not in the index")
        return found

    def document_vector(self, doc_id: str) -> np.ndarray:
        v = self.vectors[self.iids_of(doc_id)].mean(axis=0)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def string_ids(self, iids: np.ndarray) -> list[str]:
        return [self.rows[int(i)].doc for i in iids]

    def rows_of(self, iids: np.ndarray, vectors: bool = True, images: bool = False) -> list[DocRow]:
        out = []
        for i in iids.tolist():
            r = self.rows[i]
            values = {"id": r.doc, "text": r.text, "vector": self.vectors[i], **r.metadata}
            if self.chunked:
                values.update(chunk=r.chunk, chunk_start=r.start, chunk_end=r.end)
            out.append(DocRow(values, "text"))
        return out

    # -- a placement: exact search in this process ---------------------------------------
    def allowed(self, spec: dict[str, Any] | None) -> np.ndarray:
        mask = np.ones(len(self.rows), dtype=bool)
        for column, cond in (spec or {}).items():
            values = cond["in"] if isinstance(cond, dict) else [cond]
            mask &= np.array([r.metadata.get(column) in values for r in self.rows])
        return mask

    def encode(self, texts: list[str]) -> np.ndarray:
        """A 'model' for tests: a text's vector is the mean of the rows holding it."""
        out = []
        for t in texts:
            hits = [n for n, r in enumerate(self.rows) if t in r.text] or [0]
            out.append(self.vectors[hits].mean(axis=0))
        return np.array(out, dtype=np.float32)

    def search(self, task: Task) -> TaskResult:
        if isinstance(task, LexicalTask):
            return self._lexical(task)
        assert isinstance(task, SearchTask)
        allowed = self.allowed(task.filter)
        scores = task.vectors @ self.vectors.T
        scores[:, ~allowed] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, : task.k]
        d = np.take_along_axis(scores, order, 1)
        i = np.where(np.isfinite(d), order, -1)
        return np.where(np.isfinite(d), d, np.nan).astype(np.float32), i.astype(np.int64)

    def _lexical(self, task: LexicalTask) -> TaskResult:
        allowed = self.allowed(task.filter)
        d = np.full((len(task.queries), task.k), np.nan, np.float32)
        i = np.full((len(task.queries), task.k), -1, np.int64)
        for q, terms in enumerate(task.queries):
            scores = np.array(
                [sum(w * r.text.split().count(t) for t, w in terms) for r in self.rows], float
            )
            rows = [n for n in np.lexsort((np.arange(len(scores)), -scores))
                    if scores[n] > 0 and allowed[n]][: task.k]  # fmt: skip
            d[q, : len(rows)], i[q, : len(rows)] = scores[rows], rows
        return d, i


class FakeDocs:
    """The corpus seen as a `DocsLookup` (its `rows` is the lookup's)."""

    def __init__(self, corpus: FakeCorpus) -> None:
        self.corpus = corpus
        self.text_column = "text"
        self.images = False  # a text corpus
        self.chunked = corpus.chunked
        self.metadata_columns = corpus.metadata_columns
        self.metadata_types = corpus.metadata_types
        self.iids_of = corpus.iids_of
        self.document_vector = corpus.document_vector
        self.string_ids = corpus.string_ids
        self.rows = corpus.rows_of


class FakeLexical:
    """Corpus-wide 'idf': every term weighs 1; the attainable score is the term count."""

    def __init__(self, corpus: FakeCorpus) -> None:
        self.vocabulary = {t for r in corpus.rows for t in r.text.split()}

    def weigh(self, text: str) -> tuple[tuple[tuple[str, float], ...], float]:
        terms = text.split()
        return tuple((t, 1.0) for t in terms if t in self.vocabulary), float(len(terms))


class AsyncPlacement:
    """The corpus as a server's placement."""

    def __init__(self, corpus: FakeCorpus) -> None:
        self.corpus = corpus

    async def encode(self, texts: list[str]) -> np.ndarray:
        await asyncio.sleep(0)
        return self.corpus.encode(texts)

    async def search(self, task: Task) -> TaskResult:
        await asyncio.sleep(0)
        return self.corpus.search(task)

    async def search_all(self, tasks: list[Task]) -> list[TaskResult]:
        return list(await asyncio.gather(*(self.search(t) for t in tasks)))


def searcher(corpus: FakeCorpus, *, lexical: bool = False, nlist: int = 0) -> Searcher:
    manifest = SimpleNamespace(
        plan=SimpleNamespace(nlist=nlist),
        metric="cosine",
        dim=corpus.vectors.shape[1],
        search_params=SearchParams(),
        ntotal=len(corpus.rows),
    )
    return Searcher(
        manifest,  # type: ignore[arg-type]
        FakeDocs(corpus),  # type: ignore[arg-type]
        FakeLexical(corpus) if lexical else None,  # type: ignore[arg-type]
    )
