"""The one query path: `Query` values in, result rows out, for one index version.

Every way of asking an index something (the library's `ShardedIndex`, the HTTP gateway
in each placement, recommendations, analogies) goes through `Searcher`, so they answer
alike by construction. It owns what a query means:

- search parameters: the query's `nprobe` / `ef_search`, else the index's tuned ones;
- filters: checked against the index's metadata columns, applied inside the search;
- exclusions: ids left out (the inputs of vector arithmetic, `exclude`, a user's seen
  items), with the search over-fetched by their number so that k hits remain;
- vector arithmetic: the mean of the unit-length positive items minus the negative ones
  (a document given by id counts with its vector: the mean of its chunks');
- chunked documents: the search ranks chunks and answers with documents, each scored by
  its best chunk and carrying its best passages, searching deeper until k documents are
  found or the index is exhausted (`group` "chunk" answers with the chunks);
- modes: a text query is searched by its vector, by BM25 over the lexical part (the
  query's terms weighed with corpus-wide statistics), or both with their global
  rankings fused (`fusion.py`); filters and exclusions apply to both lists;
- the docs join: ids, scores and the fields each query includes.

A search is a plan (queries and their encoded texts -> `SearchTask`s, queries with equal
parameters stacked into one FAISS search, and `LexicalTask`s), rounds of shard searches
run by whoever holds the shards, and the docs join into typed `Hit`s. Where the query
model and the shards live is one object, the placement (`Placement`: in this process;
`AsyncPlacement`: a gateway replica's, local or calling shard searcher and encoder
replicas); `run` / `run_async` and `run_batch` / `run_batch_async` drive the rounds with
it and hold no logic of their own.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from embedlib.exceptions import NoLexicalIndexError, QueryError
from embedlib.index.store.docs import DocRow, DocsLookup
from embedlib.index.store.version import IndexManifest, IndexVersion, SearchParams
from embedlib.search.deadline import check_deadline
from embedlib.search.filters import check_filter
from embedlib.search.fusion import FUSIONS, Rankings
from embedlib.search.lexical import LexicalStats, LexicalTask
from embedlib.search.query import Hit, Passage, Query, Ranked, SearchOptions, TextItem
from embedlib.search.shards import SearchTask, group_tasks

TaskResult = tuple[np.ndarray, np.ndarray]
Task = SearchTask | LexicalTask
Pairs = list[tuple[float, int]]  # (score, int64 id), best first
FIRST_FETCH = 4  # a chunked search first fetches this many chunks per document wanted
FUSION_FETCH = 2  # a hybrid search fetches each ranking this many times as deep
# ... and at least this deep (Elasticsearch's rank_window_size): a document missing from
# one list scores 0 there, so a shallow window would let k change the top hits
FUSION_WINDOW = 100
# A request of at most this many dense queries, each of k <= INLINE_K with nothing excluded
# (and at most INLINE_K docs rows to read), is planned and joined on the server's event
# loop (microseconds); others in a thread
INLINE_QUERIES = 16
INLINE_K = 100
Rounds = Generator[list[Task], list[TaskResult], "Answers"]
DENSE, LEXICAL, HYBRID = "dense", "lexical", "hybrid"


@dataclass
class QueryRow:
    """One query of a plan: its prepared vector and terms, and what its answer needs."""

    vector: np.ndarray | None  # (d,) as the index compares it; None: lexical only
    options: SearchOptions
    excluded: frozenset[int]  # int64 ids to leave out
    grouped: bool  # chunks grouped into documents
    depth: int  # rows asked of each ranking
    mode: str = DENSE
    terms: tuple[tuple[str, float], ...] = ()  # weighted BM25 terms (lexical, hybrid)
    attainable: float = 0.0  # the best BM25 score the query could reach
    found: dict[str, Pairs] = field(default_factory=dict)  # each ranking's kept pairs
    more: bool = False  # a ranking gave as many as asked: more may lie deeper

    def dense_task(self, params: SearchParams) -> SearchTask:
        assert self.vector is not None
        return SearchTask(self.vector[None, :], self.depth, params, self.options.filter or None)

    def lexical_task(self) -> LexicalTask:
        return LexicalTask((self.terms,), self.depth, self.options.filter or None)

    def tasks(self, params: SearchParams) -> list[Task]:
        """This query's searches alone (a deeper round)."""
        out: list[Task] = [self.dense_task(params)] if self.vector is not None else []
        return out + ([self.lexical_task()] if self.mode != DENSE else [])


@dataclass
class SearchPlan:
    """The queries to answer and the searches of the first round."""

    rows: list[QueryRow]
    tasks: list[Task]
    members: list[list[int]]  # the query rows of each task, in stacking order
    started: float  # perf_counter when the queries arrived
    encoded: float = field(default_factory=time.perf_counter)  # ... their texts embedded


@dataclass
class Answers:
    """Each query's hits, best first, and where the time went."""

    hits: list[list[Hit]]
    timing_ms: dict[str, float]


class Placement(Protocol):
    """Where a searcher's query model and shards are, in this process."""

    def encode(self, texts: list[str]) -> np.ndarray: ...

    def encode_images(self, images: list[bytes]) -> np.ndarray: ...

    def search(self, task: Task) -> TaskResult: ...


class AsyncPlacement(Protocol):
    """Where a searcher's query model and shards are, for a server's event loop."""

    async def encode(self, texts: list[str]) -> np.ndarray: ...

    async def encode_images(self, images: list[bytes]) -> np.ndarray: ...

    async def search(self, task: Task) -> TaskResult: ...

    async def search_all(self, tasks: Sequence[Task]) -> list[TaskResult]:
        """The searches of one round, answers in order."""
        ...


def prepare_queries(vectors: np.ndarray, *, dim: int, metric: str) -> np.ndarray:
    """Query vectors as the index compares them: float32, unit length for cosine."""
    x = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    if x.shape[1] != dim:
        raise QueryError(f"query vectors have dimension {x.shape[1]}; the index has {dim}")
    if not np.isfinite(x).all():
        raise QueryError("query vectors hold NaN or infinite values")
    if metric == "cosine":  # norms in float64: squares of float32's largest values overflow
        norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
        if (norms == 0).any():
            raise QueryError("a zero query vector has no direction to compare by cosine")
        x = (x / norms).astype(np.float32)
    return x


def combine(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """gensim's most_similar arithmetic: the mean of the weighted unit-length inputs."""
    units = []
    for v, w in zip(vectors, weights, strict=True):
        v64 = np.asarray(v, dtype=np.float64)
        norm = np.linalg.norm(v64)
        units.append(w * (v64 / norm if norm > 0 else v64))
    return np.mean(units, axis=0).astype(np.float32)


class Searcher:
    """Answers queries over one index version (see the module's docstring). Open one
    with `Searcher.open(version)`; the constructor takes its parts (tests hand it fakes)."""

    def __init__(
        self, manifest: IndexManifest, docs: DocsLookup, lexical: LexicalStats | None = None
    ) -> None:
        self.manifest = manifest
        self.docs = docs
        self.lexical = lexical
        self.metric = manifest.metric
        self.dim = manifest.dim
        self.defaults = manifest.search_params
        self.ntotal = manifest.ntotal
        # the fields read from the docs rows: the text when the index keeps it, metadata
        # when it has metadata columns, the vector
        self.row_fields = frozenset(
            ["vector", *(["text"] if docs.text_column else []),
             *(["metadata"] if docs.metadata_columns else []),
             *(["thumbnail", "image"] if docs.images else [])]
        )  # fmt: skip

    @classmethod
    def open(cls, version: IndexVersion) -> Searcher:
        """The searcher of a version: its manifest, docs tables and lexical statistics."""
        return cls(version.manifest, DocsLookup.open(version), version.open_lexical_stats())

    # -- planning -------------------------------------------------------------------------

    def texts(self, queries: Sequence[Query]) -> list[str]:
        """Every text the queries need embedded, in order (what `plan` expects)."""
        return [t for q in queries if self.mode(q) != LEXICAL for t in q.texts()]

    def mode(self, q: Query | SearchOptions) -> str:
        """How a query is searched: its `mode`, else hybrid for text when the index has a
        lexical part, else dense."""
        text = isinstance(q, Query) and q.text is not None
        if q.mode is None:
            return HYBRID if text and self.lexical is not None else DENSE
        if q.mode != DENSE:
            if self.docs.images:
                raise QueryError(
                    f"mode {q.mode} ranks texts by their words, and this index holds images: "
                    "search it by its vectors (mode dense, the default), with text or an image"
                )
            if not text:
                raise QueryError(
                    f"mode {q.mode} needs a text query; vectors and vector arithmetic are "
                    "searched by their vectors (mode dense)"
                )
            if self.lexical is None:
                raise NoLexicalIndexError(
                    f"mode {q.mode} needs the index's lexical part, and this index has none: "
                    "rebuild it with `embedlib index --lexical` from an embedding set with text"
                )
        return q.mode

    def plan(
        self,
        queries: Sequence[Query],
        text_vectors: np.ndarray | None = None,
        *,
        started: float | None = None,
        image_vectors: np.ndarray | None = None,
    ) -> SearchPlan:
        """The searches for `queries`; `text_vectors` holds the embedded `texts(queries)`,
        `image_vectors` the embedded `images(queries)`."""
        started = time.perf_counter() if started is None else started
        for q in queries:
            self._check(q)
        check_deadline()
        modes = [self.mode(q) for q in queries]
        if all(q.vector is not None for q in queries):  # vectors only: one conversion
            raw = self.vector_rows([q.vector for q in queries if q.vector is not None])
            excluded = [self._excluded(q.exclude) for q in queries]
            vectors: list[np.ndarray | None] = list(
                prepare_queries(raw, dim=self.dim, metric=self.metric)
            )
        else:
            vectors, excluded = self._query_vectors(queries, text_vectors, modes, image_vectors)
            dense = [n for n, v in enumerate(vectors) if v is not None]
            if dense:
                stacked = np.stack([vectors[n] for n in dense])  # type: ignore[misc]
                x = prepare_queries(stacked, dim=self.dim,
                                    metric=self.metric)  # fmt: skip
                for n, v in zip(dense, x, strict=True):
                    vectors[n] = v
        rows = [
            self._row(v, q, e, mode, q.text)
            for v, q, e, mode in zip(vectors, queries, excluded, modes, strict=True)
        ]
        return self._stack(rows, started)

    def plan_batch(self, vectors: np.ndarray, options: SearchOptions) -> SearchPlan:
        """One search for many query vectors sharing one set of options."""
        started = time.perf_counter()
        self._check(options)
        self.mode(options)  # vectors: dense only
        x = prepare_queries(vectors, dim=self.dim, metric=self.metric)
        excluded = self._excluded(options.exclude)
        row = self._row(x[0], options, excluded) if len(x) else None
        rows = [QueryRow(v, options, excluded, row.grouped, row.depth) for v in x] if row else []
        task = SearchTask(x, row.depth if row else options.k, self._params(options),
                          options.filter or None)  # fmt: skip
        return SearchPlan(rows, [task], [list(range(len(x)))], started)

    def _check(self, options: SearchOptions) -> None:
        if options.filter:
            check_filter(options.filter, self.docs.metadata_types)

    def _row(
        self,
        vector: np.ndarray | None,
        options: SearchOptions,
        excluded: frozenset[int],
        mode: str = DENSE,
        text: str | None = None,
    ) -> QueryRow:
        grouped = self.docs.chunked and options.group == "document"
        wanted = options.k + len(excluded)
        depth = wanted * FIRST_FETCH * options.passages if grouped else wanted
        if mode == HYBRID:
            depth = max(depth * FUSION_FETCH, FUSION_WINDOW)
        terms, attainable = (
            self.lexical.weigh(text) if mode != DENSE and self.lexical and text else ((), 0.0)
        )
        return QueryRow(vector, options, excluded, grouped, min(max(self.ntotal, 1), depth),
                        mode, terms, attainable)  # fmt: skip

    def _stack(self, rows: list[QueryRow], started: float) -> SearchPlan:
        """One SearchTask per group of rows with equal parameters, and the BM25 searches."""
        dense = [n for n, r in enumerate(rows) if r.vector is not None]
        lexical = [n for n, r in enumerate(rows) if r.mode != DENSE]
        tasks: list[Task] = []
        members: list[list[int]] = []
        if dense:
            first = rows[dense[0]]
            if all(
                not rows[n].options.filter and not rows[n].excluded
                and rows[n].depth == first.depth
                and (rows[n].options.nprobe, rows[n].options.ef_search, rows[n].options.rescore)
                == (first.options.nprobe, first.options.ef_search, first.options.rescore)
                for n in dense
            ):  # fmt: skip
                # the common batch: one search for all, no per-query task to group
                x = np.stack([rows[n].vector for n in dense])  # type: ignore[misc]
                tasks.append(SearchTask(x, first.depth, self._params(first.options)))
                members.append(dense)
            else:
                groups = group_tasks(
                    [rows[n].dense_task(self._params(rows[n].options)) for n in dense]
                )
                tasks += [t for _, t in groups]
                members += [[dense[m] for m in ms] for ms, _ in groups]
        for n in lexical:
            tasks.append(rows[n].lexical_task())
            members.append([n])
        return SearchPlan(rows, tasks, members, started)

    # -- the rounds -----------------------------------------------------------------------

    def rounds(self, plan: SearchPlan) -> Rounds:
        """Yields the shard searches to run, receives their results, and returns the
        answers: a first round for every query, then deeper rounds for the grouped queries
        whose chunks did not yet make k documents (a round's depth doubles)."""
        results = yield plan.tasks
        searched = time.perf_counter()
        self._receive(plan.rows, plan.tasks, plan.members, results)
        hits = []
        for row in plan.rows:
            check_deadline()
            hits.append(self._hits(row, self._ranked(row)))
        short = [r for r, row in enumerate(plan.rows)
                 if row.grouped and len(hits[r]) < row.options.k and row.more]  # fmt: skip
        while short:
            tasks: list[Task] = []
            members: list[list[int]] = []
            for r in short:
                row = plan.rows[r]
                row.depth = min(self.ntotal, row.depth * 2)
                row.found, row.more = {}, False
                for task in row.tasks(self._params(row.options)):
                    tasks.append(task)
                    members.append([r])
            self._receive(plan.rows, tasks, members, (yield tasks))
            for r in short:
                hits[r] = self._hits(plan.rows[r], self._ranked(plan.rows[r]))
            short = [r for r in short if len(hits[r]) < plan.rows[r].options.k
                     and plan.rows[r].more]  # fmt: skip
            searched = time.perf_counter()
        return Answers(self._join(plan, hits), self._timing(plan, searched))

    def _receive(
        self,
        rows: list[QueryRow],
        tasks: list[Task],
        members: list[list[int]],
        results: list[TaskResult],
    ) -> None:
        """Each ranking's (score, id) pairs kept on its query rows, without the excluded
        ids; a ranking that gave as many as asked may hold more deeper."""
        for task, rs, (d, i) in zip(tasks, members, results, strict=True):
            check_deadline()
            kind = LEXICAL if isinstance(task, LexicalTask) else DENSE
            for r, scores, ids in zip(rs, d.tolist(), i.tolist(), strict=True):
                row = rows[r]
                valid = [(s, n) for s, n in zip(scores, ids, strict=True) if n >= 0]
                row.more |= len(valid) == row.depth and row.depth < self.ntotal
                row.found[kind] = [(s, n) for s, n in valid if n not in row.excluded]

    def _ranked(self, row: QueryRow) -> Pairs:
        """The query's ranking: its one list, or both fused (hybrid)."""
        if row.mode != HYBRID:
            return row.found[row.mode]
        rankings = Rankings(row.found[DENSE], row.found[LEXICAL], self.metric, row.attainable)
        return FUSIONS[row.options.fusion].fuse(rankings, row.options)

    def _hits(self, row: QueryRow, pairs: Pairs) -> list[Pairs]:
        """The hits of one query: each a list of pairs (a document's best chunks when
        grouped, else one pair), best first, k at most."""
        k = row.options.k
        if not row.grouped:
            return [[p] for p in pairs[:k]]
        doc_ids = self.docs.string_ids(np.fromiter((n for _, n in pairs), np.int64, len(pairs)))
        by_doc: dict[str, Pairs] = {}
        for pair, doc in zip(pairs, doc_ids, strict=True):
            chunks = by_doc.setdefault(doc, [])
            if len(chunks) < row.options.passages:
                chunks.append(pair)
        return list(by_doc.values())[:k]

    def _join(self, plan: SearchPlan, hits: list[list[Pairs]]) -> list[list[Hit]]:
        """The hits of each query; the docs read once per set of fields."""
        out: list[list[Hit]] = [[] for _ in plan.rows]
        by_fields: dict[frozenset[str], list[int]] = {}
        for r, row in enumerate(plan.rows):
            by_fields.setdefault(row.options.fields, []).append(r)
        for fields, members in by_fields.items():
            check_deadline()
            joined = self._hits_of([h for r in members for h in hits[r]], fields)
            start = 0
            for r in members:
                out[r] = joined[start : start + len(hits[r])]
                start += len(hits[r])
        for r, row in enumerate(plan.rows):
            if row.options.explain:
                for result, hit in zip(out[r], hits[r], strict=True):
                    result.explain = self._explain(row, hit[0][1])
        return out

    def _hits_of(self, found: Sequence[Pairs], include: frozenset[str]) -> list[Hit]:
        """Hits of (score, int64 id) lists, best first: one per document, its first pair's
        row scored by it, with "text", "metadata" and "vector" when `include` names them;
        in a chunked index also the passage (the matched chunk's text and span in the
        document) and, when a hit holds more pairs, its passages. The docs rows are read
        once for them all."""
        iids = np.fromiter((i for h in found for _, i in h), dtype=np.int64)
        if not self.docs.chunked and not self._row_fields(include):  # the ids suffice
            ids = self.docs.string_ids(iids)
            hits = [Hit(doc_id, h[0][0]) for doc_id, h in zip(ids, found, strict=True)]
            if "metadata" in include:  # an index without metadata columns
                for hit in hits:
                    hit.metadata = {}
            return hits
        rows = self.docs.rows(iids, vectors="vector" in include, images="image" in include)
        out, at = [], 0
        for pairs in found:
            row = rows[at]
            hit = Hit(row.id, pairs[0][0])
            if "text" in include:
                hit.text = row.text
            if "metadata" in include:
                hit.metadata = row.metadata
            if "vector" in include:
                hit.vector = row.vector.tolist()
            if "thumbnail" in include and row.thumbnail is not None:
                hit.thumbnail = base64.b64encode(row.thumbnail).decode()
            if "image" in include and row.image is not None:
                hit.image = base64.b64encode(row.image).decode()
            if self.docs.chunked:
                hit.passage = _passage(row)
                if len(pairs) > 1:
                    hit.passages = [_passage(r) for r in rows[at : at + len(pairs)]]
            out.append(hit)
            at += len(pairs)
        return out

    def _row_fields(self, include: frozenset[str]) -> frozenset[str]:
        """The fields of `include` that need the docs rows read."""
        return include & self.row_fields

    @staticmethod
    def _explain(row: QueryRow, iid: int) -> dict[str, Ranked | None]:
        """Where a hit's (best) row stood in each ranking: rank from 1 and score, or None."""
        out: dict[str, Ranked | None] = {}
        for kind, pairs in row.found.items():
            out[kind] = next(
                (Ranked(rank=n, score=s) for n, (s, i) in enumerate(pairs, 1) if i == iid), None
            )
        return out

    @staticmethod
    def _timing(plan: SearchPlan, searched: float) -> dict[str, float]:
        end = time.perf_counter()
        return {
            "encode": round((plan.encoded - plan.started) * 1000, 3),
            "search": round((searched - plan.encoded) * 1000, 3),
            "total": round((end - plan.started) * 1000, 3),
        }

    # -- drivers --------------------------------------------------------------------------

    def run(self, queries: Sequence[Query], placement: Placement) -> Answers:
        """Answer `queries` with a placement in this process."""
        started = time.perf_counter()
        texts, images = self.texts(queries), images_of(queries)
        vectors = placement.encode(texts) if texts else None
        image_vectors = placement.encode_images(images) if images else None
        plan = self.plan(queries, vectors, started=started, image_vectors=image_vectors)
        return self.drive(plan, placement)

    async def run_async(self, queries: Sequence[Query], placement: AsyncPlacement) -> Answers:
        """Answer `queries` on a server's event loop: planning, merging and the docs joins
        of all but the smallest requests run in a thread (see `_light`)."""
        started = time.perf_counter()
        texts, images = self.texts(queries), images_of(queries)
        vectors = await placement.encode(texts) if texts else None
        image_vectors = await placement.encode_images(images) if images else None
        if self._light(queries):
            plan = self.plan(queries, vectors, started=started, image_vectors=image_vectors)
        else:
            plan = await asyncio.to_thread(
                self.plan, queries, vectors, started=started, image_vectors=image_vectors
            )
        return await self.drive_async(plan, placement)

    def _light(self, options: Sequence[SearchOptions]) -> bool:
        """Whether a request's own work (apart from the searches, which placements run in
        threads when they are large) is small enough for the event loop: a few dense
        queries of modest depth, nothing to exclude or look up by id, no hits grouped by
        document. Anything else runs in a thread, where the deadline stops it."""
        return (
            len(options) <= INLINE_QUERIES
            and sum(o.k for o in options if self._row_fields(o.fields)) <= INLINE_K
            and all(
                not o.exclude and o.k <= INLINE_K and not (self.docs.chunked and o.group == "document")
                and not (isinstance(o, Query) and (o.positive or o.negative or self.mode(o) != DENSE))
                for o in options
            )
        )  # fmt: skip

    def run_batch(
        self, vectors: np.ndarray, options: SearchOptions, placement: Placement
    ) -> Answers:
        """One search for many query vectors sharing one set of options."""
        return self.drive(self.plan_batch(vectors, options), placement)

    async def run_batch_async(
        self, vectors: np.ndarray, options: SearchOptions, placement: AsyncPlacement
    ) -> Answers:
        """`run_batch` on a server's event loop (planned in a thread unless small)."""
        if len(vectors) <= INLINE_QUERIES and self._light([options]):
            plan = self.plan_batch(vectors, options)
        else:
            plan = await asyncio.to_thread(self.plan_batch, vectors, options)
        return await self.drive_async(plan, placement)

    def drive(self, plan: SearchPlan, placement: Placement) -> Answers:
        """Run a plan's rounds with a placement in this process."""
        rounds = self.rounds(plan)
        tasks = next(rounds)
        while True:
            try:
                tasks = rounds.send([placement.search(t) for t in tasks])
            except StopIteration as done:
                return done.value

    async def drive_async(self, plan: SearchPlan, placement: AsyncPlacement) -> Answers:
        """Run a plan's rounds on a server's event loop; between searches, merging and the
        docs joins run on the loop for a light plan, else in a thread."""
        rounds = self.rounds(plan)
        tasks = next(rounds)
        light = len(plan.rows) <= INLINE_QUERIES and self._light([r.options for r in plan.rows])
        while True:
            results = await placement.search_all(tasks)
            step = (
                _step(rounds, results) if light else await asyncio.to_thread(_step, rounds, results)
            )
            if isinstance(step, Answers):
                return step
            tasks = step

    # -- helpers --------------------------------------------------------------------------

    def vector_rows(self, rows: Sequence[Sequence[float] | np.ndarray]) -> np.ndarray:
        """Query vectors given as rows of floats, checked for the index's dimension."""
        dims = {len(v) for v in rows}
        if dims != {self.dim}:
            shown = ", ".join(map(str, sorted(dims)))
            raise QueryError(f"query vectors have dimension {shown}; the index has {self.dim}")
        return np.asarray(rows, dtype=np.float32)

    def _params(self, q: SearchOptions) -> SearchParams:
        # nprobe past the list count searches nothing more: clamped here, so that queries
        # asking 65, 66, ... of a 64-list index share one search instead of one each
        nlist = self.manifest.plan.nlist
        nprobe = min(q.nprobe, nlist) if q.nprobe is not None and nlist else q.nprobe
        return self.defaults.override(nprobe=nprobe, ef_search=q.ef_search, rescore=q.rescore)

    def _excluded(self, ids: Sequence[str]) -> frozenset[int]:
        """The int64 ids of the documents `exclude` names; an id the index does not hold
        leaves out nothing (it may have been deleted since the caller saw it)."""
        if not ids:
            return frozenset()
        return frozenset(i for doc in ids for i in self.docs.iids_of(doc, missing_ok=True))

    def _query_vectors(
        self,
        queries: Sequence[Query],
        text_vectors: np.ndarray | None,
        modes: Sequence[str],
        image_vectors: np.ndarray | None = None,
    ) -> tuple[list[np.ndarray | None], list[frozenset[int]]]:
        """Each query's vector (before normalization; None: lexical only) and the int64
        ids it excludes."""
        texts = iter(text_vectors if text_vectors is not None else ())
        images = iter(image_vectors if image_vectors is not None else ())
        vectors: list[np.ndarray | None] = []
        excluded = []
        for q, mode in zip(queries, modes, strict=True):
            check_deadline()
            leave_out = set(self._excluded(q.exclude))
            v: np.ndarray | None
            if mode == LEXICAL:
                v = None
            elif q.text is not None:
                v = np.asarray(next(texts), dtype=np.float32)
            elif q.image is not None:
                v = np.asarray(next(images), dtype=np.float32)
            elif q.vector is not None:
                v = self.vector_rows([q.vector])[0]
            else:
                items, weights = [], []
                for item, weight in [(i, 1.0) for i in q.positive] + [
                    (i, -1.0) for i in q.negative
                ]:
                    if isinstance(item, str):
                        leave_out.update(self.docs.iids_of(item))
                        items.append(self.docs.document_vector(item))
                    elif isinstance(item, TextItem):
                        items.append(np.asarray(next(texts), dtype=np.float32))
                    else:
                        items.append(prepare_queries(item.vector, dim=self.dim, metric="dot")[0])
                    weights.append(weight)
                v = combine(items, weights)
            vectors.append(v)
            excluded.append(frozenset(leave_out))
        return vectors, excluded


def images_of(queries: Sequence[Query]) -> list[bytes]:
    """The images the queries need embedded, in order (what `plan` expects)."""
    return [q.image for q in queries if q.image is not None]


def _step(rounds: Rounds, results: list[TaskResult]) -> list[Task] | Answers:
    """The next round's searches, or the answers once the rounds are done (StopIteration
    cannot cross a thread's future, so it is caught here)."""
    try:
        return rounds.send(results)
    except StopIteration as done:
        answers: Answers = done.value
        return answers


def _passage(row: DocRow) -> Passage:
    """A chunk row as the passage of its document: text, character span, chunk number."""
    assert row.chunk is not None
    return Passage(row.text, row.start, row.end, row.chunk)
