"""Building a sharded FAISS index on Ray: sample, train once, add in parallel, merge,
tune the search parameters for a target recall, publish a new version.

The phases live in their own modules (as autofaiss splits its `indices` package):

1. plan (`plan.py`): the factory from N, d, the metric and the memory budget.
2. train (`train.py`): a seeded uniform sample read by tasks; one task trains the empty
   index on it and writes `trained.faiss`.
3. add (`add.py`): tasks each copy the trained index and add one unit of rows with
   global int64 ids, writing a partial index and its docs rows, and the exact top-k
   of the tuning queries among its rows.
4. merge (`merge.py`): one task per serving shard joins its partial indexes and docs.
5. tune (`tune.py`): nprobe / efSearch for the target recall, and the latency.

This module drives them and publishes the version (`layout.publish`); `staging.py`
holds what the phases share.
"""

from __future__ import annotations

import dataclasses
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import fsspec
import numpy as np
from fsspec.core import url_to_fs

from embedlib.distributed import (
    check_workers_reach,
    choose_runner,
    largest_node_cpus,
    map_tasks,
    worker_slots,
)
from embedlib.embed.documents import ID, VECTOR
from embedlib.exceptions import RecallError, VectorError
from embedlib.index.build.add import PartialResult, add_units, check_unique_ids, plan_units
from embedlib.index.build.lexical import write_lexical
from embedlib.index.build.merge import merge_shard
from embedlib.index.build.plan import IndexPlan, plan_index
from embedlib.index.build.staging import PARTIALS, BuildContext
from embedlib.index.build.train import read_rows, row_picks, train_index
from embedlib.index.build.tune import ground_truth, tune
from embedlib.index.faiss_ops import prepare_vectors
from embedlib.index.store.layout import publish, staging_path
from embedlib.index.store.lock import Lease, index_lock
from embedlib.index.store.vectors import VectorCodec
from embedlib.index.store.version import IndexManifest, SearchParams, ShardEntry, Tuning
from embedlib.options import METRICS, Metric, RunOptions
from embedlib.search.lexical import LexicalInfo, check_language
from embedlib.sets.sources import VectorSource, open_sources
from embedlib.storage import human

# A build of up to this many bytes of vectors runs in this process when no cluster is
# given or running: on one machine, Ray's start and its tasks cost more than they save
# (measured in docs/benchmarks.md).
SMALL_INDEX_BYTES = 400_000_000
PUBLISH_WAIT_S = 3600.0  # a finished build waits this long for an update or gc to finish


@dataclass(frozen=True, kw_only=True)
class IndexOptions:
    """What index to build. Ids and vectors of user Parquet files are read from
    `id_column` and `vector_column`; a .npy takes its ids from `ids` (a text file, one
    id per line; row numbers when absent)."""

    factory: str = "auto"
    compress: str = "auto"  # codes in RAM: auto, none, sq8, pq
    store_vectors: str = "auto"  # the vector file: auto, float32, float16, int8
    rescore: int | str = "auto"  # candidates per result rescored exactly (0: none)
    metric: Metric | None = None  # None: the embedding set's, else cosine
    shards: int = 1
    memory_budget: int = 4_000_000_000
    target_recall: float = 0.95
    strict_recall: bool = False
    seed: int = 0
    tuning_queries: int = 500
    id_column: str = ID
    vector_column: str = VECTOR
    ids: str | None = None
    lexical: bool = True  # a BM25 index of the text beside the vectors (when there is text)
    lexical_language: str = "english"  # its analysis: a Snowball language, or "none" (raw)

    def __post_init__(self) -> None:
        check_language(self.lexical_language)
        if self.shards < 1:
            raise ValueError(f"shards must be >= 1, got {self.shards}")
        if not 0 < self.target_recall <= 1:
            raise ValueError(f"target_recall must be in (0, 1], got {self.target_recall}")
        if self.metric is not None and self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.tuning_queries < 1:
            raise ValueError("tuning_queries must be >= 1")


@dataclass
class IndexReport:
    root: str
    version: str
    factory: str
    reason: str
    metric: str
    ntotal: int
    shards: int
    search_params: SearchParams
    recall_at_10: float
    target_recall: float
    latency_ms_p50: float
    seconds: dict[str, float] = field(default_factory=dict)
    per_node: dict[str, dict[str, int]] = field(default_factory=dict)  # add tasks, vectors

    @property
    def recall_met(self) -> bool:
        return self.recall_at_10 >= self.target_recall

    def __str__(self) -> str:
        params = (
            ", ".join(f"{k}={v}" for k, v in self.search_params.to_dict().items()) or "none (exact)"
        )
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items())
        lines = [
            f"index {self.root} -> published {self.version}",
            f"  {self.factory} ({self.metric}), {self.ntotal} vectors in {self.shards} shards",
            f"  why: {self.reason}",
            f"  search params: {params}; recall@10 {self.recall_at_10:.3f} "
            f"(target {self.target_recall}); {self.latency_ms_p50:.2f} ms/query (p50, one query at a time)",
            f"  time: {phases}",
        ]
        for node, stats in sorted(self.per_node.items()):
            lines.append(
                f"  node {node[:12]}: {stats['tasks']} add tasks, {stats['vectors']} vectors"
            )
        if not self.recall_met:
            lines.append(
                f"  WARNING: recall@10 {self.recall_at_10:.3f} is below the target {self.target_recall}"
            )
        return "\n".join(lines)


def build_index(
    sources: str | list[str],
    out: str,
    *,
    options: IndexOptions | None = None,
    run: RunOptions | None = None,
    echo: Callable[[str], None] | None = None,
) -> IndexReport:
    """Build a sharded index from embedding sets or user vectors and publish it as a new
    version under the index root `out`. `echo` receives the plan as soon as it is made."""
    options = options or IndexOptions()
    run = run or RunOptions()
    urls = [sources] if isinstance(sources, str) else list(sources)
    clock = time.perf_counter()
    src = open_sources(
        urls,
        id_column=options.id_column,
        vector_column=options.vector_column,
        ids=options.ids,
        storage_options=run.storage_options,
    )
    return build_from_source(src, out, options=options, run=run, echo=echo, clock=clock)


def build_from_source(
    src: VectorSource,
    out: str,
    *,
    options: IndexOptions,
    run: RunOptions,
    echo: Callable[[str], None] | None = None,
    clock: float | None = None,
    lease: Lease | None = None,
) -> IndexReport:
    """`build_index` on vectors already opened (an index's own docs, for a retrain);
    `lease`: the index lock the caller holds. The phases run in order (see the module),
    each timed; a failure removes the staging folder and publishes nothing."""
    say = echo or (lambda line: None)
    laps = _Laps(clock if clock is not None else time.perf_counter())
    n, d = src.count, src.dim
    metric: Metric = options.metric or src.metric or "cosine"  # type: ignore[assignment]
    plan = plan_index(
        n, d, metric=metric, memory_budget=options.memory_budget, factory=options.factory,
        compress=options.compress, store_vectors=options.store_vectors, rescore=options.rescore,
    )  # fmt: skip
    say(
        f"index plan: {plan.factory} for {n} vectors of dimension {d}, metric {metric} (~{human(plan.bytes_estimate)}): {plan.reason}"
    )
    run, ran = choose_runner(
        run, small=4 * n * d <= SMALL_INDEX_BYTES, work=f"the build ({human(4 * n * d)} of vectors)",
        urls=(out, *src.urls),
    )  # fmt: skip
    say(f"running {ran}")
    check_workers_reach(out, run)
    fs, root = url_to_fs(out, **run.storage_options)
    staging = staging_path(root)
    fs.makedirs(posixpath.join(staging, PARTIALS), exist_ok=True)
    try:
        train_ids, query_ids, ctx = _sample(src, fs, staging, metric, plan, options, run)
        laps.lap("sample")
        ctx = _train(src, ctx, train_ids, options, run)
        laps.lap("train")
        partials = _add(src, ctx, options, run)
        laps.lap("add")
        by_shard, shards = _merge(partials, ctx, n, options, run)
        laps.lap("merge")
        lexical = None
        if options.lexical and src.text_column:
            shards, lexical = write_lexical(
                fs, staging, shards, src.text_column, options.lexical_language, run
            )
            laps.lap("lexical")
        tuning = _tune(ctx, partials, by_shard, shards, query_ids, options)
        _manifest(src, plan, metric, shards, options, tuning, lexical, ctx.codec).write(fs, staging)
        laps.lap("tune")
        recall = tuning.recall_at_10 or 0.0
        if recall < options.target_recall and options.strict_recall:
            raise RecallError(
                f"recall@10 reached {recall:.3f} at best, below the target "
                f"{options.target_recall} (--strict-recall); nothing was published. Try a factory "
                "with more lists or less compression, or a larger --memory-budget."
            )
        if lease is not None:  # the caller holds the index lock (a retrain)
            version = publish(fs, root, staging, lease)
        else:  # publish under the lock: never beside an update's or a gc's work
            with index_lock(fs, root, wait_s=PUBLISH_WAIT_S, what="build") as held:
                version = publish(fs, root, staging, held)
    except BaseException:
        if fs.exists(staging):
            fs.rm(staging, recursive=True)
        raise
    return IndexReport(
        root=out,
        version=version,
        factory=plan.factory,
        reason=plan.reason,
        metric=metric,
        ntotal=n,
        shards=options.shards,
        search_params=tuning.search_params,
        recall_at_10=recall,
        target_recall=options.target_recall,
        latency_ms_p50=tuning.latency_ms_p50 or 0.0,
        seconds=laps.times,
        per_node=per_node(partials),
    )


class _Laps:
    """Seconds per phase of a build."""

    def __init__(self, start: float) -> None:
        self.times: dict[str, float] = {}
        self._at = start

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.times[phase] = now - self._at
        self._at = now


def _sample(
    src: VectorSource,
    fs: fsspec.AbstractFileSystem,
    staging: str,
    metric: Metric,
    plan: IndexPlan,
    options: IndexOptions,
    run: RunOptions,
) -> tuple[np.ndarray, np.ndarray, BuildContext]:
    """The sorted training ids, the tuning query ids (held out of training where there
    are vectors enough) and the build's context, holding the tuning queries prepared."""
    n, d = src.count, src.dim
    rng = np.random.default_rng(options.seed)
    q = min(options.tuning_queries, n)
    picks = rng.choice(n, size=min(n, plan.train_size + q), replace=False)
    train_ids = np.sort(picks[: plan.train_size])
    held_out = picks[plan.train_size :]
    query_ids = np.sort(held_out if len(held_out) >= q else rng.choice(n, size=q, replace=False))
    query_vectors = np.concatenate(
        [v for v, _ in read_rows(src, query_ids, run)] or [np.zeros((0, d), np.float32)]
    )
    queries = prepare_vectors(query_vectors, metric, [str(i) for i in query_ids])
    return train_ids, query_ids, BuildContext(fs, staging, d, metric, plan, queries)


def _train(
    src: VectorSource, ctx: BuildContext, train_ids: np.ndarray, options: IndexOptions,
    run: RunOptions,
) -> BuildContext:  # fmt: skip
    """Train the empty index on the sample (one task, the largest node's CPUs); the
    context learns whether partials stream and the vector files' codec."""
    [(can_stream, codec)] = map_tasks(
        train_index,
        [(ctx, options.seed, row_picks(src, train_ids))],
        run,
        desc="training",
        num_cpus=largest_node_cpus(run),
    )
    return dataclasses.replace(ctx, streamable=can_stream, codec=codec)


def _add(
    src: VectorSource, ctx: BuildContext, options: IndexOptions, run: RunOptions
) -> list[PartialResult]:
    """Add every row to partial indexes in parallel; their ids are checked unique."""
    units = plan_units(src, options.shards)
    # IVF: add tasks of one span each and a merge on disk, so that no process holds a
    # whole shard; others (Flat) skip the merge when the shards keep every worker busy
    if ctx.streamable or (ctx.plan.mergeable and options.shards < worker_slots(run)):
        calls = [([u], ctx, f"unit-{u.index:05d}") for u in units]
    else:  # one task per shard: no merge step (HNSW cannot merge)
        calls = [
            ([u for u in units if u.shard == s], ctx, f"shard-{s:05d}")
            for s in range(options.shards)
        ]
        calls = [c for c in calls if c[0]]
    partials: list[PartialResult] = map_tasks(add_units, calls, run, desc="adding")
    check_unique_ids(partials, ctx)
    return partials


def _merge(
    partials: list[PartialResult], ctx: BuildContext, n: int, options: IndexOptions,
    run: RunOptions,
) -> tuple[list[list[PartialResult]], list[ShardEntry]]:  # fmt: skip
    """Each serving shard from its partials (one task per shard): the partials by shard
    and the shards' manifest entries."""
    by_shard = [[p for p in partials if p.shard == s] for s in range(options.shards)]
    if not all(by_shard):
        raise VectorError(
            f"{n} vectors cannot fill {options.shards} shards; use --shards {n} or fewer"
        )
    merges = [
        (s, [p.name for p in ps], sum(p.rows for p in ps), ctx) for s, ps in enumerate(by_shard)
    ]
    shards: list[ShardEntry] = map_tasks(merge_shard, merges, run, desc="merging")
    return by_shard, shards


def _tune(
    ctx: BuildContext,
    partials: list[PartialResult],
    by_shard: list[list[PartialResult]],
    shards: list[ShardEntry],
    query_ids: np.ndarray,
    options: IndexOptions,
) -> Tuning:
    """The search parameters for the target recall, measured against the exact top-k the
    add tasks found; the partial files are removed afterwards."""
    gt = ground_truth(partials, query_ids, ctx.metric)
    # the recall curve on the partial indexes (a shard moved into place: the shard),
    # which hold the same lists in smaller files; latency on the shards
    pieces: list[str] = []
    for ps, entry in zip(by_shard, shards, strict=True):
        moved = len(ps) == 1
        pieces += [entry.file] if moved else [f"{PARTIALS}/{p.name}.faiss" for p in ps]
    tuning = tune(ctx.fs, ctx.staging, pieces, shards, ctx.plan, ctx.codec, ctx.queries,
                  query_ids, gt, options.target_recall)  # fmt: skip
    partials_dir = posixpath.join(ctx.staging, PARTIALS)
    if ctx.fs.exists(partials_dir):  # object stores: gone once empty
        ctx.fs.rm(partials_dir, recursive=True)
    return tuning


def per_node(partials: list[PartialResult]) -> dict[str, dict[str, int]]:
    """How many add tasks and vectors each node processed (the last, successful try)."""
    out: dict[str, dict[str, int]] = {}
    for p in partials:
        stats = out.setdefault(p.node, {"tasks": 0, "vectors": 0})
        stats["tasks"] += 1
        stats["vectors"] += p.rows
    return out


def _manifest(
    src: VectorSource,
    plan: IndexPlan,
    metric: Metric,
    shards: list[ShardEntry],
    options: IndexOptions,
    tuning: Tuning,
    lexical: LexicalInfo | None,
    codec: VectorCodec,
) -> IndexManifest:
    return IndexManifest(
        factory=plan.factory,
        plan=plan,
        metric=metric,
        dim=src.dim,
        ntotal=src.count,
        shards=tuple(shards),
        model=src.fingerprint,
        text_column=src.text_column,
        sources=tuple(src.sources),
        seed=options.seed,
        memory_budget=options.memory_budget,
        tuning=tuning,
        chunking=src.chunking,
        lexical=lexical,
        vectors=codec,
        modality=src.modality,
    )
