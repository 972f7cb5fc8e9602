"""Building a sharded FAISS index on Ray: sample, train once, add in parallel, merge,
tune the search parameters for a target recall, publish a new version.

1. A uniform random sample (seeded) of the whole set is read by tasks, one per part that
   holds sampled rows; the driver never loads the set.
2. One task trains the index on the sample and writes `trained.faiss`.
3. Add tasks each copy the trained empty index and add one unit of rows (a part cut at
   serving-shard boundaries) with global int64 ids; each also writes the unit's docs
   rows and computes the exact top-k of the tuning queries among its rows.
4. Merge tasks combine each serving shard's partial indexes (`merge_from`, ids kept);
   HNSW, which cannot merge, builds each shard in one task instead.
5. The driver merges the exact top-k into ground truth, tunes nprobe/efSearch on the
   built shards, writes the manifest and switches CURRENT.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import faiss
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from embedlib import __version__
from embedlib.documents import ID, VECTOR, id_hashes
from embedlib.exceptions import EmbedlibError
from embedlib.index.faiss_ops import (
    local_copy,
    merge_into,
    prepare_vectors,
    read_index_file,
    read_index_mmap,
    search_params,
    use_task_cpus,
    write_index,
)
from embedlib.index.ivf_file import merge_ivf_files, streamable
from embedlib.index.layout import INDEX_MANIFEST, publish, staging_path
from embedlib.index.plan import IndexPlan, faiss_metric, human, plan_index
from embedlib.index.reader import merge_topk
from embedlib.index.sources import Part, VectorError, VectorSource, open_sources, read_part
from embedlib.options import METRICS, Metric, RunOptions
from embedlib.runner import (
    check_workers_reach,
    current_node,
    largest_node_cpus,
    map_tasks,
    worker_slots,
)
from embedlib.store import (
    conform_table,
    file_sha256,
    is_local,
    unify_schemas,
    vector_array,
    write_json_atomic,
)

IID = "_iid"
PARTIALS = "_partials"
K_TUNE = 10
DOCS_ROW_GROUP = 8192


class RecallError(EmbedlibError):
    """The target recall could not be reached and --strict-recall was given."""


@dataclass(frozen=True, kw_only=True)
class IndexOptions:
    """What index to build. Ids and vectors of user Parquet files are read from
    `id_column` and `vector_column`; a .npy takes its ids from `ids` (a text file, one
    id per line; row numbers when absent)."""

    factory: str = "auto"
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

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError(f"shards must be >= 1, got {self.shards}")
        if not 0 < self.target_recall <= 1:
            raise ValueError(f"target_recall must be in (0, 1], got {self.target_recall}")
        if self.metric is not None and self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.tuning_queries < 1:
            raise ValueError("tuning_queries must be >= 1")


@dataclass(frozen=True)
class Unit:
    """Rows [start, stop) of a part (positions within the part), all in one serving shard."""

    index: int
    shard: int
    part: Part
    start: int
    stop: int

    @property
    def first_id(self) -> int:
        return self.part.offset + self.start


@dataclass(frozen=True)
class BuildContext:
    fs: fsspec.AbstractFileSystem
    staging: str
    dim: int
    metric: Metric
    plan: IndexPlan
    queries: np.ndarray  # tuning queries, as indexed (normalized for cosine)
    streamable: bool = False  # partial files merge list by list on disk (IVF)


@dataclass
class PartialResult:
    shard: int
    name: str
    rows: int
    gt_scores: np.ndarray
    gt_ids: np.ndarray
    id_hashes: np.ndarray
    node: str


@dataclass
class IndexReport:
    root: str
    version: str
    factory: str
    reason: str
    metric: str
    ntotal: int
    shards: int
    search_params: dict[str, int]
    recall_at_10: float
    target_recall: float
    latency_ms_p50: float
    seconds: dict[str, float] = field(default_factory=dict)
    per_node: dict[str, dict[str, int]] = field(default_factory=dict)  # add tasks, vectors

    @property
    def recall_met(self) -> bool:
        return self.recall_at_10 >= self.target_recall

    def __str__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.search_params.items()) or "none (exact)"
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


def _sample_rows(part: Part, positions: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Task: the vectors at `positions` (0 = the part's first row) and their global ids."""
    data = read_part(part, dim=dim, rows=positions)
    return data.vectors, part.offset + positions


def _train(ctx: BuildContext, seed: int, picks: list[tuple[Part, np.ndarray, int]]) -> bool:
    """Task: read the sample (rows `picks` of each part, side by side in threads: never
    through the object store), train the empty index once on it, write `trained.faiss`.
    Returns whether its partial files can be merged list by list on disk."""
    use_task_cpus()
    index = faiss.index_factory(ctx.dim, ctx.plan.factory, faiss_metric(ctx.metric))
    if not index.is_trained:
        with ThreadPoolExecutor(faiss.omp_get_max_threads()) as pool:
            samples = list(pool.map(lambda pick: _sample_rows(*pick), picks))
        x = (
            np.concatenate([v for v, _ in samples])
            if samples
            else np.zeros((0, ctx.dim), np.float32)
        )
        ids = [str(i) for _, g in samples for i in g]
        del samples
        x = prepare_vectors(x, ctx.metric, ids)
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.cp.seed = seed
        index.train(x)
    write_index(index, ctx.fs, posixpath.join(ctx.staging, "trained.faiss"))
    return streamable(index)


def _add_units(units: list[Unit], ctx: BuildContext, name: str) -> PartialResult:
    """Task: copy the trained index, add the units' vectors with global ids, write the
    partial index and its docs rows, and find the queries' exact top-k among them."""
    use_task_cpus()
    index = read_index_file(ctx.fs, posixpath.join(ctx.staging, "trained.faiss"))
    k = K_TUNE + 1
    best_d = np.full((len(ctx.queries), 0), np.nan, np.float32)
    best_i = np.zeros((len(ctx.queries), 0), np.int64)
    hashes = []
    docs_path = posixpath.join(ctx.staging, PARTIALS, f"{name}.parquet")
    writer: pq.ParquetWriter | None = None
    rows = 0
    with ctx.fs.open(docs_path, "wb") as out:
        for unit in units:
            data = read_part(unit.part, dim=ctx.dim, rows=np.arange(unit.start, unit.stop))
            x = prepare_vectors(data.vectors, ctx.metric, data.ids)
            gids = np.arange(unit.first_id, unit.first_id + len(x), dtype=np.int64)
            index.add_with_ids(x, gids)
            d, i = faiss.knn(ctx.queries, x, min(k, len(x)), metric=faiss_metric(ctx.metric))
            best_d, best_i = _merge_topk(best_d, best_i, d, i + unit.first_id, k, ctx.metric)
            hashes.append(id_hashes(data.ids))
            table = pa.Table.from_arrays(
                [
                    pa.array(gids),
                    pa.array(data.ids, pa.string()),
                    vector_array(x, "float32"),
                    *data.metadata.columns,
                ],
                names=[IID, ID, VECTOR, *data.metadata.column_names],
            )
            if writer is None:
                writer = pq.ParquetWriter(out, table.schema)
            fitted = conform_table(table, writer.schema)
            if fitted is None:
                raise VectorError(
                    f"the metadata columns of {unit.part.path!r} differ from the other inputs'"
                )
            writer.write_table(fitted, row_group_size=DOCS_ROW_GROUP)
            rows += len(x)
        if writer is not None:
            writer.close()
    write_index(index, ctx.fs, posixpath.join(ctx.staging, PARTIALS, f"{name}.faiss"))
    return PartialResult(
        units[0].shard, name, rows, best_d, best_i, np.concatenate(hashes), current_node()
    )


def _merge_shard(shard: int, names: list[str], count: int, ctx: BuildContext) -> dict[str, Any]:
    """Task: merge a serving shard's partial indexes and docs tables into one each (a
    shard added by one task is moved into place as it is)."""
    fs, base = ctx.fs, posixpath.join(ctx.staging, PARTIALS)
    shard_file, docs_file = f"shard-{shard:05d}.faiss", f"docs-{shard:05d}.parquet"
    if len(names) == 1:
        fs.mv(posixpath.join(base, f"{names[0]}.faiss"), posixpath.join(ctx.staging, shard_file))
        fs.mv(posixpath.join(base, f"{names[0]}.parquet"), posixpath.join(ctx.staging, docs_file))
        return _shard_info(fs, ctx.staging, shard, count, shard_file, docs_file)
    if ctx.streamable:
        _merge_files(
            fs, ctx.staging, [posixpath.join(base, f"{n}.faiss") for n in names], shard_file
        )
    else:
        index = read_index_file(fs, posixpath.join(base, f"{names[0]}.faiss"))
        for name in names[1:]:
            merge_into(index, read_index_file(fs, posixpath.join(base, f"{name}.faiss")))
        write_index(index, fs, posixpath.join(ctx.staging, shard_file))
        del index  # the docs below stream; the merged index need not stay
    schemas = []
    for name in names:
        with fs.open(posixpath.join(base, f"{name}.parquet"), "rb") as fh:
            schemas.append(pq.read_schema(fh))
    schema = unify_schemas(schemas)
    with (
        fs.open(posixpath.join(ctx.staging, docs_file), "wb") as out,
        pq.ParquetWriter(out, schema) as writer,
    ):
        for name in names:
            with fs.open(posixpath.join(base, f"{name}.parquet"), "rb") as fh:
                for batch in pq.ParquetFile(fh).iter_batches(batch_size=DOCS_ROW_GROUP):
                    fitted = conform_table(
                        pa.Table.from_batches([batch]), schema, text_fallback=True
                    )
                    assert fitted is not None
                    writer.write_table(fitted, row_group_size=DOCS_ROW_GROUP)
    return _shard_info(fs, ctx.staging, shard, count, shard_file, docs_file)


def _merge_files(
    fs: fsspec.AbstractFileSystem, staging: str, parts: list[str], shard_file: str
) -> None:
    """Merge partial IVF files list by list on disk (remote ones through local copies)."""
    trained = posixpath.join(staging, "trained.faiss")
    if is_local(fs):
        merge_ivf_files(trained, parts, posixpath.join(staging, shard_file))
        return
    with tempfile.TemporaryDirectory(prefix="embedlib-merge-") as tmp:
        local = [os.path.join(tmp, f"{n}.faiss") for n in range(len(parts))]
        for remote, path in zip(
            [trained, *parts], [os.path.join(tmp, "trained.faiss"), *local], strict=True
        ):
            fs.get_file(remote, path)
        merge_ivf_files(os.path.join(tmp, "trained.faiss"), local, os.path.join(tmp, shard_file))
        fs.put_file(os.path.join(tmp, shard_file), posixpath.join(staging, shard_file))


def _shard_info(
    fs: fsspec.AbstractFileSystem,
    staging: str,
    shard: int,
    count: int,
    shard_file: str,
    docs_file: str,
) -> dict[str, Any]:
    """The manifest entry of a finished shard."""
    shard_path = posixpath.join(staging, shard_file)
    return {
        "shard": shard,
        "file": shard_file,
        "count": count,
        "sha256": file_sha256(fs, shard_path),
        "docs": docs_file,
        "docs_sha256": file_sha256(fs, posixpath.join(staging, docs_file)),
    }


def _merge_topk(
    d0: np.ndarray, i0: np.ndarray, d1: np.ndarray, i1: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    d = np.concatenate([d0, d1], axis=1)
    i = np.concatenate([i0, i1], axis=1)
    key = d if metric == "l2" else -d
    order = np.argsort(np.where(np.isnan(key), np.inf, key), axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, axis=1), np.take_along_axis(i, order, axis=1)


def _units(src: VectorSource, shards: int) -> list[Unit]:
    n = src.count
    bounds = [round(s * n / shards) for s in range(shards + 1)]
    units: list[Unit] = []
    for part in src.parts:
        a = part.offset
        b = part.offset + part.rows
        for s in range(shards):
            lo, hi = max(a, bounds[s]), min(b, bounds[s + 1])
            if lo < hi:
                units.append(Unit(len(units), s, part, lo - a, hi - a))
    return units


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
) -> IndexReport:
    """`build_index` on vectors already opened (an index's own docs, for a retrain)."""
    say = echo or (lambda line: None)
    times: dict[str, float] = {}
    clock = clock if clock is not None else time.perf_counter()
    n, d = src.count, src.dim
    metric: Metric = options.metric or src.metric or "cosine"  # type: ignore[assignment]
    plan = plan_index(
        n, d, metric=metric, memory_budget=options.memory_budget, factory=options.factory
    )
    say(
        f"index plan: {plan.factory} for {n} vectors of dimension {d}, metric {metric} (~{human(plan.bytes_estimate)}): {plan.reason}"
    )
    check_workers_reach(out, run)
    fs, root = url_to_fs(out, **run.storage_options)
    staging = staging_path(root)
    fs.makedirs(posixpath.join(staging, PARTIALS), exist_ok=True)
    try:
        rng = np.random.default_rng(options.seed)
        q = min(options.tuning_queries, n)
        picks = rng.choice(n, size=min(n, plan.train_size + q), replace=False)
        train_ids = np.sort(picks[: plan.train_size])
        held_out = picks[plan.train_size :]
        query_ids = held_out if len(held_out) >= q else rng.choice(n, size=q, replace=False)
        query_ids = np.sort(query_ids)
        query_vectors = np.concatenate(
            [v for v, _ in read_rows(src, query_ids, run)] or [np.zeros((0, d), np.float32)]
        )
        queries = prepare_vectors(query_vectors, metric, [str(i) for i in query_ids])
        ctx = BuildContext(fs, staging, d, metric, plan, queries)
        times["sample"] = time.perf_counter() - clock
        clock = time.perf_counter()
        [can_stream] = map_tasks(
            _train,
            [(ctx, options.seed, _row_picks(src, train_ids))],
            run,
            desc="training",
            num_cpus=largest_node_cpus(run),
        )
        times["train"] = time.perf_counter() - clock
        clock = time.perf_counter()
        ctx = dataclasses.replace(ctx, streamable=can_stream)
        units = _units(src, options.shards)
        # IVF: add tasks of one part each and a merge on disk, so that no process holds a
        # whole shard; others (Flat) skip the merge when the shards keep every worker busy
        if ctx.streamable or (plan.mergeable and options.shards < worker_slots(run)):
            calls = [([u], ctx, f"unit-{u.index:05d}") for u in units]
        else:  # one task per shard: no merge step (HNSW cannot merge)
            calls = [
                ([u for u in units if u.shard == s], ctx, f"shard-{s:05d}")
                for s in range(options.shards)
            ]
            calls = [c for c in calls if c[0]]
        partials: list[PartialResult] = map_tasks(_add_units, calls, run, desc="adding")
        _check_unique_ids(partials, fs, staging)
        times["add"] = time.perf_counter() - clock
        clock = time.perf_counter()
        by_shard = [[p for p in partials if p.shard == s] for s in range(options.shards)]
        if not all(by_shard):
            raise VectorError(
                f"{n} vectors cannot fill {options.shards} shards; use --shards {n} or fewer"
            )
        merges = [
            (s, [p.name for p in ps], sum(p.rows for p in ps), ctx) for s, ps in enumerate(by_shard)
        ]
        shard_infos = map_tasks(_merge_shard, merges, run, desc="merging")
        times["merge"] = time.perf_counter() - clock
        clock = time.perf_counter()
        gt = _ground_truth(partials, query_ids, metric)
        manifest = _manifest(src, plan, metric, shard_infos, options)
        write_json_atomic(fs, posixpath.join(staging, INDEX_MANIFEST), manifest)
        # the recall curve on the partial indexes (a shard moved into place: the shard),
        # which hold the same lists in smaller files; latency on the shards
        pieces: list[str] = []
        for ps, info in zip(by_shard, shard_infos, strict=True):
            moved = len(ps) == 1
            pieces += [info["file"]] if moved else [f"{PARTIALS}/{p.name}.faiss" for p in ps]
        tuning = _tune(
            fs,
            staging,
            pieces,
            [info["file"] for info in shard_infos],
            plan,
            queries,
            query_ids,
            gt,
            options.target_recall,
        )
        if fs.exists(posixpath.join(staging, PARTIALS)):  # object stores: gone once empty
            fs.rm(posixpath.join(staging, PARTIALS), recursive=True)
        manifest.update(tuning)
        write_json_atomic(fs, posixpath.join(staging, INDEX_MANIFEST), manifest)
        times["tune"] = time.perf_counter() - clock
        if tuning["recall_at_10"] < options.target_recall and options.strict_recall:
            raise RecallError(
                f"recall@10 reached {tuning['recall_at_10']:.3f} at best, below the target "
                f"{options.target_recall} (--strict-recall); nothing was published. Try a factory "
                "with more lists or less compression, or a larger --memory-budget."
            )
        version = publish(fs, root, staging)
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
        search_params=tuning["search_params"],
        recall_at_10=tuning["recall_at_10"],
        target_recall=options.target_recall,
        latency_ms_p50=tuning["latency_ms_p50"],
        seconds=times,
        per_node=_per_node(partials),
    )


def _per_node(partials: list[PartialResult]) -> dict[str, dict[str, int]]:
    """How many add tasks and vectors each node processed (the last, successful try)."""
    out: dict[str, dict[str, int]] = {}
    for p in partials:
        stats = out.setdefault(p.node, {"tasks": 0, "vectors": 0})
        stats["tasks"] += 1
        stats["vectors"] += p.rows
    return out


def read_rows(
    src: VectorSource, global_ids: np.ndarray, run: RunOptions
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Read the rows with these global ids, one task per part that holds some."""
    calls = _row_picks(src, global_ids)
    return map_tasks(_sample_rows, calls, run, desc="sampling") if calls else []


def _row_picks(src: VectorSource, global_ids: np.ndarray) -> list[tuple[Part, np.ndarray, int]]:
    """(part, positions within it, dim) for each part that holds some of the sorted ids."""
    calls = []
    for part in src.parts:
        lo = np.searchsorted(global_ids, part.offset)
        hi = np.searchsorted(global_ids, part.offset + part.rows)
        if hi > lo:
            calls.append((part, global_ids[lo:hi] - part.offset, src.dim))
    return calls


def _check_unique_ids(
    partials: list[PartialResult], fs: fsspec.AbstractFileSystem, staging: str
) -> None:
    hashes = np.concatenate([p.id_hashes for p in partials]) if partials else np.zeros(0, np.uint64)
    uniq, counts = np.unique(hashes, return_counts=True)
    dup = set(uniq[counts > 1].tolist())
    if not dup:
        return
    names: list[str] = []
    for p in partials:
        with fs.open(posixpath.join(staging, PARTIALS, f"{p.name}.parquet"), "rb") as fh:
            ids = pq.read_table(fh, columns=[ID]).column(ID).to_pylist()
        names += [i for i, h in zip(ids, p.id_hashes.tolist(), strict=True) if h in dup]
    shown = sorted(set(names))[:5]
    raise VectorError(
        f"{len(names) - len(set(names))} duplicate ids in the input, e.g. {', '.join(map(repr, shown))}; ids must be unique"
    )


def _ground_truth(partials: list[PartialResult], query_ids: np.ndarray, metric: str) -> np.ndarray:
    """Exact top-10 global ids per query, the query itself left out."""
    d = np.full((len(query_ids), 0), np.nan, np.float32)
    i = np.zeros((len(query_ids), 0), np.int64)
    for p in partials:
        d, i = _merge_topk(d, i, p.gt_scores, p.gt_ids, K_TUNE + 1, metric)
    return np.stack([_without(row, q)[:K_TUNE] for row, q in zip(i, query_ids, strict=True)])


def _without(row: np.ndarray, query_id: int) -> np.ndarray:
    return row[row != query_id]


def _recall(found: np.ndarray, truth: np.ndarray, query_ids: np.ndarray) -> float:
    hits = [
        len(set(_without(f, q)[:K_TUNE].tolist()) & set(t.tolist())) / K_TUNE
        for f, t, q in zip(found, truth, query_ids, strict=True)
    ]
    return float(np.mean(hits)) if hits else 1.0


def _tune(
    fs: fsspec.AbstractFileSystem,
    staging: str,
    pieces: list[str],
    shard_files: list[str],
    plan: IndexPlan,
    queries: np.ndarray,
    query_ids: np.ndarray,
    truth: np.ndarray,
    target: float,
) -> dict[str, Any]:
    """The smallest nprobe / efSearch that reaches the target recall@10 on the queries,
    and the latency of one query at a time with it.

    The recall is measured on `pieces` (files that together hold every vector: partial
    indexes cut from the same trained index probe the same lists as their merge, so
    their merged top-k is the shard's), mapped one at a time: the searches touch most
    of a file's pages, and a whole shard mapped would grow the build's memory with N."""
    if plan.nlist:
        name, candidates = (
            "nprobe",
            [
                c
                for c in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
                if c < plan.nlist
            ]
            + [plan.nlist],
        )
    elif "HNSW" in plan.factory:
        name, candidates = "efSearch", [16, 32, 64, 128, 256, 512, 1024, 2048]
    else:
        name, candidates = "", [0]
    cache = os.path.join(tempfile.gettempdir(), "embedlib-index-cache")
    paths = [local_copy(fs, posixpath.join(staging, f), cache) for f in pieces]

    def search(path: str, rows: np.ndarray, k: int, params: dict[str, int]) -> Any:
        piece = read_index_mmap(path)
        found = piece.search(rows, k, params=_params(piece, params))
        del piece  # unmapped: the pages it touched leave this process
        return found

    curve = []
    chosen, recall = candidates[-1], 0.0
    for c in candidates:
        params = {name: c} if name else {}
        parts = [search(p, queries, K_TUNE + 1, params) for p in paths]
        _, found = merge_topk(parts, K_TUNE + 1, plan.metric)
        recall = _recall(found, truth, query_ids)
        curve.append({"params": params, "recall_at_10": round(recall, 4)})
        chosen = c
        if recall >= target:
            break
    params = {name: chosen} if name else {}
    # one query at a time: its latency is the sum of its shard searches (as ShardedIndex
    # searches them one after another), timed shard by shard
    rows = queries[: min(100, len(queries))]
    latencies = np.zeros(len(rows))
    for path in [local_copy(fs, posixpath.join(staging, f), cache) for f in shard_files]:
        shard = read_index_mmap(path)
        shard_params = _params(shard, params)
        for n, row in enumerate(rows):
            t = time.perf_counter()
            shard.search(row[None, :], K_TUNE, params=shard_params)
            latencies[n] += (time.perf_counter() - t) * 1000
        del shard
    return {
        "search_params": params,
        "recall_at_10": round(recall, 4),
        "target_recall": target,
        "latency_ms_p50": round(float(np.median(latencies)), 3) if len(rows) else 0.0,
        "tuning": {"queries": len(queries), "k": K_TUNE, "curve": curve},
    }


def _params(shard: faiss.Index, params: dict[str, int]) -> Any:
    """FAISS search parameters for a tuning candidate ({"nprobe": n} or {"efSearch": n})."""
    return search_params(shard, nprobe=params.get("nprobe"), ef_search=params.get("efSearch"))


def _manifest(
    src: VectorSource,
    plan: IndexPlan,
    metric: str,
    shards: list[dict[str, Any]],
    options: IndexOptions,
) -> dict[str, Any]:
    return {
        "format": "embedlib.index",
        "format_version": 1,
        "embedlib_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "factory": plan.factory,
        "plan": plan.to_dict(),
        "metric": metric,
        "normalized": metric == "cosine",
        "dim": src.dim,
        "ntotal": src.count,
        "trained": "trained.faiss",
        "shards": shards,
        "model": src.fingerprint.to_dict() if src.fingerprint else None,
        "text_model": src.fingerprint is not None and src.fingerprint.is_text_model,
        "text_column": src.text_column,
        "sources": src.sources,
        "seed": options.seed,
        "memory_budget": options.memory_budget,
    }
