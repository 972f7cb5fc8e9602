"""The Serve deployments behind the gateway: shard searchers and the query encoder.

A `ShardSet` holds one or more serving shards (IVF shards memory-mapped) and the metadata
columns of their docs tables, for filters; a `ShardSearcher` replica serves one, and
gathers concurrent requests by `@serve.batch` into one FAISS search per shard (with
placement "gateway" the gateway holds the `ShardSet` itself). The `Encoder` embeds query text with
the index's own model, refusing to start when its fingerprint differs from the index's.
"""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import faiss
import numpy as np
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from ray import serve

from embedlib.documents import VECTOR
from embedlib.index.faiss_ops import local_copy, read_index_mmap, search_params
from embedlib.index.reader import IID, merge_topk
from embedlib.models import ModelFingerprint
from embedlib.serve.filters import filter_mask
from embedlib.store import read_json, vectors_of

EXACT_FILTER_LIMIT = 20_000  # at most this many matching rows: exact search over them


@dataclass(frozen=True)
class SearchTask:
    """One request's part of a shard search."""

    vectors: np.ndarray  # (n, d), prepared (unit length for cosine)
    k: int
    nprobe: int | None = None
    ef_search: int | None = None
    filter: dict[str, Any] | None = None

    def group_key(self) -> str:
        return json.dumps(
            [self.k, self.nprobe, self.ef_search, self.filter], sort_keys=True, default=str
        )


class _Shard:
    def __init__(
        self, fs: Any, version: str, info: dict[str, Any], metric: str, text_column: str | None
    ) -> None:
        cache = os.path.join(tempfile.gettempdir(), "embedlib-index-cache")
        self.index = read_index_mmap(local_copy(fs, posixpath.join(version, info["file"]), cache))
        self.metric = metric
        self.nlist = (
            int(faiss.extract_index_ivf(self.index).nlist)
            if faiss.try_extract_index_ivf(self.index)
            else 0
        )
        self.docs_path = posixpath.join(version, info["docs"])
        self.fs = fs
        with fs.open(self.docs_path, "rb") as fh:
            names = pq.read_schema(fh).names
            fh.seek(0)
            keep = [c for c in names if c not in (VECTOR, text_column)]
            self.meta = pq.read_table(fh, columns=keep)
        self.iids = self.meta.column(IID).to_numpy()

    def search(self, x: np.ndarray, task: SearchTask) -> tuple[np.ndarray, np.ndarray]:
        if not task.filter:
            params = search_params(self.index, nprobe=task.nprobe, ef_search=task.ef_search)
            return self.index.search(x, task.k, params=params)
        mask = filter_mask(self.meta, task.filter)
        allowed = self.iids[mask]
        if len(allowed) <= EXACT_FILTER_LIMIT:
            return self._exact(x, task.k, np.flatnonzero(mask))
        selector = faiss.IDSelectorBatch(allowed.astype(np.int64))
        # fewer matching rows spread over the same lists: probe proportionally more
        nprobe = task.nprobe
        if self.nlist and nprobe is not None:
            nprobe = min(self.nlist, int(np.ceil(nprobe * len(self.iids) / max(len(allowed), 1))))
        params = search_params(
            self.index, nprobe=nprobe, ef_search=task.ef_search, selector=selector
        )
        return self.index.search(x, task.k, params=params)

    def _exact(self, x: np.ndarray, k: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact search over the matching rows, with the vectors of the docs table."""
        n = len(x)
        if len(rows) == 0:
            return np.full((n, k), np.nan, np.float32), np.full((n, k), -1, np.int64)
        with self.fs.open(self.docs_path, "rb") as fh:
            table = pq.read_table(fh, columns=[VECTOR]).take(rows)
        vectors = vectors_of(table.column(VECTOR))
        metric = faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        d, i = faiss.knn(x, vectors, min(k, len(rows)), metric=metric)
        ids = np.where(i >= 0, self.iids[rows][np.maximum(i, 0)], -1)
        if d.shape[1] < k:
            pad = k - d.shape[1]
            d = np.pad(d, ((0, 0), (0, pad)), constant_values=np.nan)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        return d, ids


def _search_shard(shard: _Shard, task: SearchTask) -> tuple[np.ndarray, np.ndarray]:
    return shard.search(task.vectors, task)


PARALLEL_SHARD_ROWS = 16  # from this many queries on, shards are searched in parallel


class ShardSet:
    """Some shards of one index version, searched together (in a searcher replica, or in
    the gateway itself with placement "gateway")."""

    def __init__(
        self,
        version_path: str,
        shard_numbers: list[int],
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        fs, path = url_to_fs(version_path, **(storage_options or {}))
        manifest = read_json(fs, posixpath.join(path, "manifest.json"))
        self.metric = manifest["metric"]
        self.shards = [
            _Shard(fs, path, manifest["shards"][s], self.metric, manifest.get("text_column"))
            for s in shard_numbers
        ]
        # a batch searches its shards side by side (FAISS releases the GIL); one thread
        # each, as Ray gives the replica one OpenMP thread
        self._lock = threading.Lock()
        self._busy = 0  # searches running now
        self._pool = (
            ThreadPoolExecutor(len(self.shards), thread_name_prefix="shard")
            if len(self.shards) > 1
            else None
        )

    def search(self, tasks: list[SearchTask]) -> list[tuple[np.ndarray, np.ndarray]]:
        """One FAISS search per shard for each group of tasks with the same parameters."""
        groups = group_tasks(tasks)
        return scatter(tasks, groups, [self.search_one(task) for _, task in groups])

    def search_one(self, task: SearchTask) -> tuple[np.ndarray, np.ndarray]:
        """Every shard searched, the top k merged. A batch searched while no other search
        runs here takes its shards in parallel; under concurrent batches each keeps to
        one thread (parallel shards would only add contention then)."""
        with self._lock:
            self._busy += 1
            alone = self._busy == 1
        try:
            if self._pool is not None and alone and len(task.vectors) >= PARALLEL_SHARD_ROWS:
                parts = list(self._pool.map(partial(_search_shard, task=task), self.shards))
            else:
                parts = [shard.search(task.vectors, task) for shard in self.shards]
        finally:
            with self._lock:
                self._busy -= 1
        return merge_topk(parts, task.k, self.metric)


def group_tasks(tasks: list[SearchTask]) -> list[tuple[list[int], SearchTask]]:
    """Tasks with the same parameters stacked into one, with the positions of its members."""
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


class ShardSearcher:
    """A Serve deployment over a `ShardSet`: concurrent requests are gathered by
    `@serve.batch` into one search."""

    def __init__(
        self,
        version_path: str,
        shard_numbers: list[int],
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.shard_set = ShardSet(version_path, shard_numbers, storage_options)

    def ping(self) -> int:
        return len(self.shard_set.shards)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def search(self, tasks: list[SearchTask]) -> list[tuple[np.ndarray, np.ndarray]]:
        return self.shard_set.search(tasks)


def query_encoder(fingerprint: dict[str, Any]) -> Any:
    """The index's own model, for query text; refused when the model found differs from
    the one the index was built with."""
    from embedlib.encode import TextEncoder, backend_for

    want = ModelFingerprint.from_dict(fingerprint)
    encoder = TextEncoder(
        want.name,
        normalize=want.normalize,
        max_seq_length=want.max_seq_length,
        backend=backend_for(want),
    )
    want.require_compatible(encoder.fingerprint, what="the index", other_what="the query encoder")
    return encoder


def encode_batches(encoder: Any, batches: list[list[str]]) -> list[np.ndarray]:
    """One model call for the texts of several requests; each request gets its rows."""
    vectors, _ = encoder.encode([t for batch in batches for t in batch])
    out, start = [], 0
    for batch in batches:
        out.append(vectors[start : start + len(batch)])
        start += len(batch)
    return out


class Encoder:
    """Embeds query text with the index's own model."""

    def __init__(self, fingerprint: dict[str, Any]) -> None:
        self.encoder = query_encoder(fingerprint)

    def ping(self) -> int:
        return int(self.encoder.dim)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def encode(self, batches: list[list[str]]) -> list[np.ndarray]:
        """One model call for all concurrent requests' texts."""
        return encode_batches(self.encoder, batches)

    def count_tokens(self, texts: list[str]) -> int:
        return int(self.encoder.token_lengths(texts).sum())
