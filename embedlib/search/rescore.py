"""Exact rescoring: the approximate candidates of compressed codes scored again against
the vectors of the vector file, best k kept.

A search with `rescore = r` takes the r*k best candidates by their code distances (of
all the shards a `ShardSet` holds together, so that the answer does not depend on the
shard count; a per-shard deployment rescores its shard's own), reads their vectors
(`store/vectors.py`) and orders them by the exact inner product (cosine, dot) or squared
L2 distance (l2), as FAISS scores full vectors. The build tunes r with nprobe
(`build/tune.py`) to reach the target recall.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

MAX_CANDIDATES = 10_000  # candidates one shard rescores per query, whatever k x rescore


def rescore(
    queries: np.ndarray,
    ids: np.ndarray,
    vectors_of: Callable[[np.ndarray], np.ndarray],
    k: int,
    metric: str,
) -> tuple[np.ndarray, np.ndarray]:
    """The top k of candidate `ids` (n, c; -1: none) by exact score against `queries`
    (n, d, as indexed); `vectors_of` gives the vectors of a flat array of ids. Missing
    results keep id -1 and a NaN score, as FAISS pads them."""
    n, c = ids.shape
    valid = ids >= 0
    scores = np.full((n, c), np.nan, np.float32)
    if valid.any():
        flat = ids[valid]
        vectors = vectors_of(flat)
        rows = np.nonzero(valid)[0]
        q = queries[rows]
        if metric == "l2":
            diff = vectors - q
            scores[valid] = np.einsum("ij,ij->i", diff, diff)
        else:
            scores[valid] = np.einsum("ij,ij->i", vectors, q)
    key = np.where(valid, scores if metric == "l2" else -scores, np.inf)  # missing last
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    d, i = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
    if i.shape[1] < k:
        pad = k - i.shape[1]
        d = np.pad(d, ((0, 0), (0, pad)), constant_values=np.nan)
        i = np.pad(i, ((0, 0), (0, pad)), constant_values=-1)
    return d, i
