"""Serving shards searched together: raw top-k (score, int64 id) for stacked query vectors.

A `SearchTask` is one FAISS search's worth of work: query vectors sharing k, search
parameters and a filter; a `LexicalTask` (lexical.py) is BM25 searches of weighted terms. An `IndexShard` is one shard's FAISS index with its docs table;
a filter is applied inside its search (an exact search over the matching rows when they
are few, else a FAISS ID selector with nprobe scaled up). A `ShardSet` searches several
shards and merges their top-k. The `Searcher` above it owns what a query means; a
`ShardSet` lives in the library's `ShardedIndex`, in a gateway replica (placement
"gateway"), or behind `@serve.batch` in a `ShardSearcher` replica.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import faiss
import numpy as np

from embedlib.exceptions import QueryError
from embedlib.index.binary import BinaryIndex
from embedlib.index.faiss_ops import merge_topk, nlist_of, search_params
from embedlib.index.store.docs import DocsLookup, ShardDocs
from embedlib.index.store.version import IndexVersion, SearchParams
from embedlib.search.filters import Filter, filter_mask
from embedlib.search.lexical import LexicalTask, ShardPostings, merge_lexical, top_rows
from embedlib.search.rescore import MAX_CANDIDATES, rescore

EXACT_FILTER_LIMIT = 20_000  # at most this many matching rows: exact search over them
PARALLEL_SHARD_ROWS = 16  # from this many queries on, shards are searched in parallel


@dataclass(frozen=True)
class SearchTask:
    """Query vectors (prepared: unit length for cosine) searched with one k, one set of
    search parameters and one filter."""

    vectors: np.ndarray  # (n, d) float32
    k: int
    params: SearchParams = field(default_factory=SearchParams)
    filter: Filter | None = None

    def group_key(self) -> str:
        """Tasks with equal keys can be stacked into one search."""
        return json.dumps(
            [self.k, self.params.nprobe, self.params.ef_search, self.params.rescore, self.filter],
            sort_keys=True,
            default=str,
        )


class IndexShard:
    """One serving shard: its FAISS index, its docs table and its BM25 postings."""

    def __init__(
        self,
        index: faiss.Index,
        docs: ShardDocs,
        metric: str,
        postings: ShardPostings | None = None,
    ) -> None:
        self.index, self.docs, self.metric, self.postings = index, docs, metric, postings
        self.nlist = nlist_of(index)
        self.binary = isinstance(index, BinaryIndex)
        self._unfiltered: dict[tuple[int | None, int | None], Any] = {}

    def _params(self, params: SearchParams) -> Any:
        """FAISS's search parameters for `params`, made once (FAISS only reads them, so
        concurrent searches share them)."""
        key = (params.nprobe, params.ef_search)
        found = self._unfiltered.get(key)
        if found is None:
            found = search_params(self.index, nprobe=params.nprobe, ef_search=params.ef_search)
            self._unfiltered[key] = found
        return found

    def search_lexical(self, task: LexicalTask) -> tuple[np.ndarray, np.ndarray]:
        """BM25 top-k (scores, int64 ids) of each query, among the rows the filter keeps."""
        if self.postings is None:
            raise QueryError("this shard has no lexical index")
        allowed = filter_mask(self.docs.metadata, task.filter) if task.filter else None
        d = np.full((len(task.queries), task.k), np.nan, np.float32)
        i = np.full((len(task.queries), task.k), -1, np.int64)
        for q, terms in enumerate(task.queries):
            scores = self.postings.scores(terms)
            rows = top_rows(scores, allowed, task.k)
            d[q, : len(rows)], i[q, : len(rows)] = scores[rows], self.docs.iids[rows]
        return d, i

    def search(self, task: SearchTask) -> tuple[np.ndarray, np.ndarray]:
        """The shard's top k: FAISS's (the top `rescore x k` of compressed codes rescored
        exactly from the vector file), or an exact search of a filter's few rows."""
        x, params = task.vectors, task.params
        factor = params.rescore or 0
        depth = max(task.k, min(task.k * factor, MAX_CANDIDATES)) if factor else task.k
        if not task.filter:
            found = self.index.search(x, depth, params=self._params(params))
            return self._rescored(x, found, task.k) if factor else found
        mask = filter_mask(self.docs.metadata, task.filter)
        rows = np.flatnonzero(mask)
        if len(rows) <= EXACT_FILTER_LIMIT:
            return self._exact(x, task.k, rows)
        if self.binary:
            found = self._post_filtered(x, depth, params, mask, len(rows))
            return (
                self._rescored(x, found, task.k)
                if factor
                else merge_topk([found], task.k, self.metric)
            )
        allowed = self.docs.iids[rows]
        selector = faiss.IDSelectorBatch(allowed.astype(np.int64))
        # fewer matching rows spread over the same lists: probe proportionally more
        nprobe = params.nprobe
        if self.nlist and nprobe is not None:
            nprobe = min(self.nlist, int(np.ceil(nprobe * len(mask) / max(len(allowed), 1))))
        p = search_params(self.index, nprobe=nprobe, ef_search=params.ef_search, selector=selector)
        found = self.index.search(x, depth, params=p)
        return self._rescored(x, found, task.k) if factor else found

    def _post_filtered(
        self, x: np.ndarray, depth: int, params: SearchParams, mask: np.ndarray, kept: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """A binary index (no ID selector in FAISS's binary IVF): candidates fetched as
        much deeper as the filter is selective (at most MAX_CANDIDATES), those it
        rejects dropped."""
        deeper = int(min(MAX_CANDIDATES, max(depth, np.ceil(2 * depth * len(mask) / kept))))
        nprobe = params.nprobe
        if self.nlist and nprobe is not None:
            nprobe = min(self.nlist, int(np.ceil(nprobe * len(mask) / kept)))
        d, i = self.index.search(
            x, deeper, params=search_params(self.index, nprobe=nprobe, ef_search=None)
        )
        pos = self.docs.positions(i.ravel()).reshape(i.shape)
        keep = (pos >= 0) & mask[np.maximum(pos, 0)]
        d, i = np.where(keep, d, np.nan), np.where(keep, i, -1)
        return merge_topk([(d, i)], depth, self.metric)

    def _rescored(
        self, x: np.ndarray, found: tuple[np.ndarray, np.ndarray], k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        docs = self.docs
        return rescore(x, found[1], lambda iids: docs.vectors(docs.positions(iids)), k, self.metric)

    def _exact(self, x: np.ndarray, k: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact search over the matching rows, with the vectors of the docs table."""
        n = len(x)
        if len(rows) == 0:
            return np.full((n, k), np.nan, np.float32), np.full((n, k), -1, np.int64)
        vectors = self.docs.vectors(rows)
        metric = faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        d, i = faiss.knn(x, vectors, min(k, len(rows)), metric=metric)
        ids = np.where(i >= 0, self.docs.iids[rows][np.maximum(i, 0)], -1)
        if d.shape[1] < k:
            pad = k - d.shape[1]
            d = np.pad(d, ((0, 0), (0, pad)), constant_values=np.nan)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        return d, ids


def _search_shard(shard: IndexShard, task: SearchTask) -> tuple[np.ndarray, np.ndarray]:
    return shard.search(task)


class ShardSet:
    """Shards of one index version searched together, their top-k merged."""

    def __init__(self, shards: Sequence[IndexShard], metric: str) -> None:
        self.shards = list(shards)
        self.metric = metric
        # a batch searches its shards side by side (FAISS releases the GIL); one thread
        # each, as Ray gives a replica one OpenMP thread
        self._lock = threading.Lock()
        self._busy = 0  # searches running now
        self._pool = (
            ThreadPoolExecutor(len(self.shards), thread_name_prefix="shard")
            if len(self.shards) > 1
            else None
        )

    @classmethod
    def open(
        cls,
        version: IndexVersion,
        shards: Sequence[int] | None = None,
        docs: Sequence[ShardDocs] | None = None,
    ) -> ShardSet:
        """Some serving shards of a version (all by default), with their docs tables
        (opened here unless given)."""
        numbers = list(range(len(version.manifest.shards)) if shards is None else shards)
        tables = list(docs) if docs is not None else DocsLookup.open(version, numbers).shards
        metric = version.manifest.metric
        return cls(
            [
                IndexShard(version.open_shard(s), d, metric, version.open_postings(s))
                for s, d in zip(numbers, tables, strict=True)
            ],
            metric,
        )

    def search(self, tasks: list[SearchTask | LexicalTask]) -> list[tuple[np.ndarray, np.ndarray]]:
        """One FAISS search per shard for each group of tasks with the same parameters
        (BM25 searches each on their own)."""
        dense = [n for n, t in enumerate(tasks) if isinstance(t, SearchTask)]
        out = [self.search_one(t) if isinstance(t, LexicalTask) else None for t in tasks]
        if dense:
            vector_tasks = [tasks[n] for n in dense]
            groups = group_tasks(vector_tasks)  # type: ignore[arg-type]
            found = scatter(vector_tasks, groups, [self.search_one(task) for _, task in groups])  # type: ignore[arg-type]
            for n, result in zip(dense, found, strict=True):
                out[n] = result
        return out  # type: ignore[return-value]

    def search_one(self, task: SearchTask | LexicalTask) -> tuple[np.ndarray, np.ndarray]:
        """Every shard searched, the top k merged. A batch searched while no other search
        runs here takes its shards in parallel; under concurrent batches each keeps to
        one thread (parallel shards would only add contention then)."""
        if isinstance(task, LexicalTask):
            return merge_lexical([shard.search_lexical(task) for shard in self.shards], task.k)
        factor = task.params.rescore or 0
        if factor and len(self.shards) > 1:
            # the top rescore x k candidates of all shards together by their code
            # distances (the shards share one trained index), rescored once: the answer
            # does not depend on how the vectors are cut into shards
            depth = max(task.k, min(task.k * factor, MAX_CANDIDATES))
            raw = replace(task, k=depth, params=replace(task.params, rescore=None))
            _, candidates = merge_topk(self._each_shard(raw), depth, self.metric)
            return rescore(task.vectors, candidates, self.vectors_of, task.k, self.metric)
        parts = self._each_shard(task)
        return parts[0] if len(parts) == 1 else merge_topk(parts, task.k, self.metric)

    def _each_shard(self, task: SearchTask) -> list[tuple[np.ndarray, np.ndarray]]:
        with self._lock:
            self._busy += 1
            alone = self._busy == 1
        try:
            if self._pool is not None and alone and len(task.vectors) >= PARALLEL_SHARD_ROWS:
                return list(self._pool.map(partial(_search_shard, task=task), self.shards))
            return [shard.search(task) for shard in self.shards]
        finally:
            with self._lock:
                self._busy -= 1

    def vectors_of(self, iids: np.ndarray) -> np.ndarray:
        """The stored vectors of int64 ids, each from the shard that holds it."""
        out: np.ndarray | None = None
        for shard in self.shards:
            pos = shard.docs.positions(iids)
            here = pos >= 0
            if here.any():
                found = shard.docs.vectors(pos[here])
                if out is None:
                    out = np.empty((len(iids), found.shape[1]), np.float32)
                out[here] = found
        return out if out is not None else np.zeros((len(iids), 0), np.float32)


def group_tasks(tasks: list[SearchTask]) -> list[tuple[list[int], SearchTask]]:
    """Tasks with the same parameters stacked into one, with the positions of its members."""
    if len(tasks) == 1:
        return [([0], tasks[0])]
    groups: dict[str, list[int]] = {}
    for n, task in enumerate(tasks):
        groups.setdefault(task.group_key(), []).append(n)
    return [
        (members, replace(tasks[members[0]], vectors=np.concatenate(
            [tasks[m].vectors for m in members]).astype(np.float32, copy=False)))
        for members in groups.values()
    ]  # fmt: skip


def scatter(
    tasks: list[SearchTask],
    groups: list[tuple[list[int], SearchTask]],
    results: list[tuple[np.ndarray, np.ndarray]],
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The results of stacked tasks handed back to the tasks they were stacked from."""
    out: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0), np.empty(0))] * len(tasks)
    for (members, _), (d, i) in zip(groups, results, strict=True):
        start = 0
        for m in members:
            n_rows = len(tasks[m].vectors)
            out[m] = (d[start : start + n_rows], i[start : start + n_rows])
            start += n_rows
    return out
