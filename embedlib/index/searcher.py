"""The one query path: `Query` values in, result rows out, for one index version.

Every way of asking an index something (the library's `ShardedIndex`, the HTTP gateway
in each placement, recommendations, analogies) goes through `Searcher`, so they answer
alike by construction. It owns what a query means:

- search parameters: the query's `nprobe` / `ef_search`, else the index's tuned ones;
- filters: checked against the index's metadata columns, applied inside the search;
- exclusions: ids left out (the inputs of vector arithmetic, `exclude`, a user's seen
  items), with k over-fetched by their number so that k hits remain;
- vector arithmetic: the mean of the unit-length positive items minus the negative ones;
- the docs join: ids, scores and the fields each query includes.

A search runs in three steps: `plan` (queries and their encoded texts -> `SearchTask`s,
queries with equal parameters stacked into one FAISS search), the tasks searched by
whoever holds the shards (in this process, or shard searcher replicas), and `finish`
(excluded ids dropped, k kept, docs joined). `run` and `run_async` drive the steps with a
synchronous or an asynchronous encoder and shard search; they hold no logic of their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedlib.exceptions import QueryError
from embedlib.index.docs import DocsLookup
from embedlib.index.filters import check_filter
from embedlib.index.query import Query, SearchOptions, TextItem
from embedlib.index.shards import SearchTask, group_tasks
from embedlib.index.version import IndexManifest, SearchParams

Row = dict[str, Any]
TaskResult = tuple[np.ndarray, np.ndarray]


@dataclass
class SearchPlan:
    """The FAISS searches that answer some queries, and how to read their results."""

    tasks: list[SearchTask]
    members: list[list[int]]  # the query rows of each task, in stacking order
    k: list[int]  # per query row
    excluded: list[frozenset[int]]  # per query row: int64 ids to leave out
    fields: list[frozenset[str]]  # per query row: fields to include
    started: float  # perf_counter when the queries arrived
    encoded: float  # ... when their texts were embedded


@dataclass
class Answers:
    """Each query's result rows ({"id", "score"} plus the fields it included), and
    where the time went."""

    rows: list[list[Row]]
    timing_ms: dict[str, float]


def prepare_queries(vectors: np.ndarray, *, dim: int, metric: str) -> np.ndarray:
    """Query vectors as the index compares them: float32, unit length for cosine."""
    x = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    if x.shape[1] != dim:
        raise QueryError(f"query vectors have dimension {x.shape[1]}; the index has {dim}")
    if not np.isfinite(x).all():
        raise QueryError("query vectors hold NaN or infinite values")
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if (norms == 0).any():
            raise QueryError("a zero query vector has no direction to compare by cosine")
        x = x / norms
    return x


def combine(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """gensim's most_similar arithmetic: the mean of the weighted unit-length inputs."""
    units = []
    for v, w in zip(vectors, weights, strict=True):
        norm = np.linalg.norm(v)
        units.append(w * (v / norm if norm > 0 else v))
    return np.mean(units, axis=0).astype(np.float32)


class Searcher:
    """Answers queries over one index version (see the module's docstring)."""

    def __init__(self, manifest: IndexManifest, docs: DocsLookup) -> None:
        self.manifest = manifest
        self.docs = docs
        self.metric = manifest.metric
        self.dim = manifest.dim
        self.defaults = manifest.search_params

    # -- the steps ------------------------------------------------------------------------

    @staticmethod
    def texts(queries: Sequence[Query]) -> list[str]:
        """Every text the queries need embedded, in order (what `plan` expects)."""
        return [t for q in queries for t in q.texts()]

    def plan(
        self,
        queries: Sequence[Query],
        text_vectors: np.ndarray | None = None,
        *,
        started: float | None = None,
    ) -> SearchPlan:
        """The searches for `queries`; `text_vectors` holds the embedded `texts(queries)`."""
        started = time.perf_counter() if started is None else started
        encoded = time.perf_counter()
        for q in queries:
            if q.filter:
                check_filter(q.filter, self.docs.metadata_columns)
        if all(q.vector is not None for q in queries):  # vectors only: one conversion
            raw = self.vector_rows([q.vector for q in queries])  # type: ignore[misc]
            excluded = [self._excluded(q.exclude) for q in queries]
        else:
            rows, excluded = self._query_vectors(queries, text_vectors)
            raw = np.stack(rows)
        x = prepare_queries(raw, dim=self.dim, metric=self.metric)
        first = queries[0]
        if all(
            not q.filter and not e and (q.k, q.nprobe, q.ef_search) == (first.k, first.nprobe, first.ef_search)
            for q, e in zip(queries, excluded, strict=True)
        ):  # fmt: skip
            # the common batch: one search for all, no per-query task to group
            tasks = [SearchTask(x, first.k, self._params(first))]
            members = [list(range(len(queries)))]
        else:
            per_row = [
                SearchTask(x[n : n + 1], q.k + len(e), self._params(q), q.filter or None)
                for n, (q, e) in enumerate(zip(queries, excluded, strict=True))
            ]
            groups = group_tasks(per_row)
            tasks = [task for _, task in groups]
            members = [m for m, _ in groups]
        return SearchPlan(
            tasks, members, [q.k for q in queries], excluded, [q.fields for q in queries],
            started, encoded,
        )  # fmt: skip

    def plan_batch(self, vectors: np.ndarray, like: SearchOptions) -> SearchPlan:
        """One search for many query vectors sharing one set of options."""
        started = time.perf_counter()
        if like.filter:
            check_filter(like.filter, self.docs.metadata_columns)
        x = prepare_queries(vectors, dim=self.dim, metric=self.metric)
        excluded = self._excluded(like.exclude)
        n = len(x)
        task = SearchTask(x, like.k + len(excluded), self._params(like), like.filter or None)
        return SearchPlan(
            [task], [list(range(n))], [like.k] * n, [excluded] * n, [like.fields] * n,
            started, time.perf_counter(),
        )  # fmt: skip

    def finish(self, plan: SearchPlan, results: Sequence[TaskResult]) -> Answers:
        """The result rows of each query from its task's (scores, int64 ids)."""
        searched = time.perf_counter()
        pairs: list[list[tuple[float, int]]] = [[] for _ in plan.k]
        for members, (d, i) in zip(plan.members, results, strict=True):
            for row, ds, ns in zip(members, d.tolist(), i.tolist(), strict=True):
                skip, k = plan.excluded[row], plan.k[row]
                pairs[row] = [(s, n) for s, n in zip(ds, ns, strict=True)
                              if n >= 0 and n not in skip][:k]  # fmt: skip
        out: list[list[Row]] = [[] for _ in plan.k]
        by_fields: dict[frozenset[str], list[int]] = {}
        for row, fields in enumerate(plan.fields):
            by_fields.setdefault(fields, []).append(row)
        for fields, rows in by_fields.items():  # the docs read once per set of fields
            joined = self.docs.result_rows([p for r in rows for p in pairs[r]], fields)
            start = 0
            for r in rows:
                out[r] = joined[start : start + len(pairs[r])]
                start += len(pairs[r])
        end = time.perf_counter()
        timing = {
            "encode": round((plan.encoded - plan.started) * 1000, 3),
            "search": round((searched - plan.encoded) * 1000, 3),
            "total": round((end - plan.started) * 1000, 3),
        }
        return Answers(out, timing)

    # -- drivers --------------------------------------------------------------------------

    def run(
        self,
        queries: Sequence[Query],
        encode: Callable[[list[str]], np.ndarray],
        search: Callable[[SearchTask], TaskResult],
    ) -> Answers:
        """Answer `queries` with a synchronous encoder and shard search."""
        started = time.perf_counter()
        texts = self.texts(queries)
        plan = self.plan(queries, encode(texts) if texts else None, started=started)
        return self.finish(plan, [search(task) for task in plan.tasks])

    async def run_async(
        self,
        queries: Sequence[Query],
        encode: Callable[[list[str]], Awaitable[np.ndarray]],
        search: Callable[[SearchTask], Awaitable[TaskResult]],
    ) -> Answers:
        """Answer `queries` with an asynchronous encoder and shard search."""
        started = time.perf_counter()
        texts = self.texts(queries)
        plan = self.plan(queries, await encode(texts) if texts else None, started=started)
        if len(plan.tasks) == 1:
            results = [await search(plan.tasks[0])]
        else:
            results = list(await asyncio.gather(*(search(t) for t in plan.tasks)))
        return self.finish(plan, results)

    def run_batch(
        self,
        vectors: np.ndarray,
        options: SearchOptions,
        search: Callable[[SearchTask], TaskResult],
    ) -> Answers:
        """Answer many query vectors sharing `options`, with a synchronous shard search."""
        plan = self.plan_batch(vectors, options)
        return self.finish(plan, [search(task) for task in plan.tasks])

    async def run_batch_async(
        self,
        vectors: np.ndarray,
        options: SearchOptions,
        search: Callable[[SearchTask], Awaitable[TaskResult]],
    ) -> Answers:
        """Answer many query vectors sharing `options`, with an asynchronous shard search."""
        plan = self.plan_batch(vectors, options)
        return self.finish(plan, [await search(task) for task in plan.tasks])

    def vector_rows(self, rows: Sequence[Sequence[float] | np.ndarray]) -> np.ndarray:
        """Query vectors given as rows of floats, checked for the index's dimension."""
        dims = {len(v) for v in rows}
        if dims != {self.dim}:
            shown = ", ".join(map(str, sorted(dims)))
            raise QueryError(f"query vectors have dimension {shown}; the index has {self.dim}")
        return np.asarray(rows, dtype=np.float32)

    # -- helpers --------------------------------------------------------------------------

    def _params(self, q: SearchOptions) -> SearchParams:
        return self.defaults.override(nprobe=q.nprobe, ef_search=q.ef_search)

    def _excluded(self, ids: Sequence[str]) -> frozenset[int]:
        return frozenset(self.docs.iid_of(i) for i in ids) if ids else frozenset()

    def _query_vectors(
        self, queries: Sequence[Query], text_vectors: np.ndarray | None
    ) -> tuple[list[np.ndarray], list[frozenset[int]]]:
        """Each query's vector (before normalization) and the int64 ids it excludes."""
        texts = iter(text_vectors if text_vectors is not None else ())
        vectors, excluded = [], []
        for q in queries:
            leave_out = set(self._excluded(q.exclude))
            if q.text is not None:
                v = np.asarray(next(texts), dtype=np.float32)
            elif q.vector is not None:
                v = self.vector_rows([q.vector])[0]
            else:
                items, weights = [], []
                for item, weight in [(i, 1.0) for i in q.positive] + [
                    (i, -1.0) for i in q.negative
                ]:
                    if isinstance(item, str):
                        iid = self.docs.iid_of(item)
                        leave_out.add(iid)
                        items.append(self.docs.vector_of_iid(iid))
                    elif isinstance(item, TextItem):
                        items.append(np.asarray(next(texts), dtype=np.float32))
                    else:
                        items.append(
                            prepare_queries(np.asarray(item), dim=self.dim, metric="dot")[0]
                        )
                    weights.append(weight)
                v = combine(items, weights)
            vectors.append(v)
            excluded.append(frozenset(leave_out))
        return vectors, excluded
