"""Index build, phase 5: the smallest nprobe / efSearch (and, for compressed codes, the
smallest rescoring factor at it) that reaches the target recall@10 on held-out queries
(against the exact top-k the add tasks found), and the latency of one query at a time
with them."""

from __future__ import annotations

import posixpath
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import faiss
import fsspec
import numpy as np

from embedlib.index.build.add import PartialResult
from embedlib.index.build.plan import IndexPlan
from embedlib.index.build.staging import K_TUNE
from embedlib.index.faiss_ops import local_copy, merge_topk, read_index_mmap, search_params
from embedlib.index.store.vectors import VectorCodec, VectorFile
from embedlib.index.store.version import SearchParams, ShardEntry, Tuning
from embedlib.search.rescore import rescore

RESCORE_STEPS = 4  # factors tried: the plan's, then doubled up to 3 times (4, 8, 16, 32)


def ground_truth(
    partials: Sequence[PartialResult], query_ids: np.ndarray, metric: str
) -> np.ndarray:
    """Exact top-10 global ids per query (merged from the add tasks' exact top-k), the
    query itself left out."""
    d = np.full((len(query_ids), 0), np.nan, np.float32)
    i = np.zeros((len(query_ids), 0), np.int64)
    for p in partials:
        d, i = merge_topk([(d, i), (p.gt_scores, p.gt_ids)], K_TUNE + 1, metric)
    return np.stack([_without(row, q)[:K_TUNE] for row, q in zip(i, query_ids, strict=True)])


def _without(row: np.ndarray, query_id: int) -> np.ndarray:
    return row[row != query_id]


def _recall(found: np.ndarray, truth: np.ndarray, query_ids: np.ndarray) -> float:
    """recall@10 against the exact neighbours; an index of fewer than 11 vectors has
    fewer than 10 to find (the padding, id -1, is not a neighbour)."""
    hits = []
    for f, t, q in zip(found, truth, query_ids, strict=True):
        wanted = set(t[t >= 0].tolist())
        if wanted:
            hits.append(len(set(_without(f, q)[:K_TUNE].tolist()) & wanted) / len(wanted))
    return float(np.mean(hits)) if hits else 1.0


def _candidates(plan: IndexPlan) -> list[SearchParams]:
    """The search parameters tried, cheapest first."""
    if plan.nlist:
        steps = [c for c in (2**n for n in range(15)) if c < plan.nlist] + [plan.nlist]
        return [SearchParams(nprobe=c) for c in steps]
    if "HNSW" in plan.factory:
        return [SearchParams(ef_search=c) for c in (16, 32, 64, 128, 256, 512, 1024, 2048)]
    return [SearchParams()]


def tune(
    fs: fsspec.AbstractFileSystem,
    staging: str,
    pieces: list[str],
    shards: Sequence[ShardEntry],
    plan: IndexPlan,
    codec: VectorCodec,
    queries: np.ndarray,
    query_ids: np.ndarray,
    truth: np.ndarray,
    target: float,
) -> Tuning:
    """The smallest nprobe / efSearch that reaches the target recall@10 on the queries
    (with compressed codes: the smallest nprobe at which some rescoring factor does, and
    the smallest such factor), and the latency of one query at a time with them.

    The recall is measured on `pieces` (files that together hold every vector: partial
    indexes cut from the same trained index probe the same lists as their merge, so
    their merged top-k is the shard's), mapped one at a time: the searches touch most
    of a file's pages, and a whole shard mapped would grow the build's memory with N.
    Candidates are rescored from the shards' vector files (global ids are contiguous per
    shard). Remote staging files are copied into a temporary folder, removed afterwards."""
    factors = [plan.rescore * 2**n for n in range(RESCORE_STEPS)] if plan.rescore else [0]
    with tempfile.TemporaryDirectory(prefix="embedlib-tune-") as tmp:
        paths = [local_copy(fs, posixpath.join(staging, f), tmp) for f in pieces]
        files = [
            VectorFile(local_copy(fs, posixpath.join(staging, e.vectors or ""), tmp), codec)
            for e in shards
        ]
        starts = np.cumsum([0] + [e.count for e in shards])

        def vectors_of(gids: np.ndarray) -> np.ndarray:
            shard = np.searchsorted(starts, gids, side="right") - 1
            out = np.empty((len(gids), queries.shape[1]), np.float32)
            for s in np.unique(shard).tolist():
                here = shard == s
                out[here] = files[s].get(gids[here] - starts[s])
            return out

        k = K_TUNE + 1
        curve = []
        chosen, recall = SearchParams(), 0.0
        for params in _candidates(plan):
            depth = k * max(1, *factors)
            parts = [_search_file(p, queries, depth, params) for p in paths]
            _, found = merge_topk(parts, depth, plan.metric)
            for factor in factors:
                if factor:
                    _, top = rescore(queries, found[:, : k * factor], vectors_of, k, plan.metric)
                else:
                    top = found[:, :k]
                recall = _recall(top, truth, query_ids)
                tried = SearchParams(nprobe=params.nprobe, ef_search=params.ef_search,
                                     rescore=factor or None)  # fmt: skip
                curve.append({"params": tried.to_dict(), "recall_at_10": round(recall, 4)})
                chosen = tried
                if recall >= target:
                    break
            if recall >= target:
                break
        # one query at a time: its latency is the sum of its shard searches (as a
        # ShardSet searches them one after another), timed shard by shard
        rows = queries[: min(100, len(queries))]
        latencies = np.zeros(len(rows))
        depth = K_TUNE * (chosen.rescore or 1)
        for entry in shards:
            shard = read_index_mmap(local_copy(fs, posixpath.join(staging, entry.file), tmp))
            vectors = VectorFile(
                local_copy(fs, posixpath.join(staging, entry.vectors or ""), tmp), codec
            )
            shard_params = _faiss_params(shard, chosen)
            first = int(starts[entry.shard])

            def shard_vectors(
                gids: np.ndarray, v: VectorFile = vectors, f: int = first
            ) -> np.ndarray:
                return v.get(gids - f)

            for n, row in enumerate(rows):
                t = time.perf_counter()
                _, ids = shard.search(row[None, :], depth, params=shard_params)
                if chosen.rescore:
                    rescore(row[None, :], ids, shard_vectors, K_TUNE, plan.metric)
                latencies[n] += (time.perf_counter() - t) * 1000
            del shard, vectors
    return Tuning(
        search_params=chosen,
        recall_at_10=round(recall, 4),
        target_recall=target,
        latency_ms_p50=round(float(np.median(latencies)), 3) if len(rows) else 0.0,
        curve={"queries": len(queries), "k": K_TUNE, "curve": curve},
    )


def _search_file(path: str, rows: np.ndarray, k: int, params: SearchParams) -> Any:
    piece = read_index_mmap(path)
    found = piece.search(rows, k, params=_faiss_params(piece, params))
    del piece  # unmapped: the pages it touched leave this process
    return found


def _faiss_params(index: faiss.Index, params: SearchParams) -> Any:
    return search_params(index, nprobe=params.nprobe, ef_search=params.ef_search)
