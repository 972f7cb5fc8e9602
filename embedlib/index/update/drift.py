"""Drift of an updated IVF index: how far the new vectors sit from the trained quantizer,
and how unbalanced its lists became; past the ratios below, an update warns to retrain."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

import faiss
import fsspec
import numpy as np
import pyarrow.parquet as pq

from embedlib.index.binary import BinaryIndex
from embedlib.index.store.docs import IID
from embedlib.index.store.vectors import read_vector_rows
from embedlib.index.store.version import IndexManifest

DRIFT_DISTANCE_RATIO = 1.25  # new vectors this much farther from their centroid: retrain
DRIFT_IMBALANCE_RATIO = 1.5  # list sizes this much less balanced than before: retrain
SAMPLE = 10_000  # kept vectors compared


@dataclass
class Drift:
    """How far the new vectors sit from the trained quantizer (IVF indexes)."""

    new_distance: float  # mean distance of the added vectors to their nearest centroid
    kept_distance: float  # the same for a sample of the vectors already indexed
    imbalance_before: float  # FAISS's imbalance factor of the list sizes (1 = even)
    imbalance_after: float

    @property
    def should_retrain(self) -> bool:
        return (
            self.kept_distance > 0 and self.new_distance > DRIFT_DISTANCE_RATIO * self.kept_distance
        ) or self.imbalance_after > DRIFT_IMBALANCE_RATIO * self.imbalance_before


def kept_sample(
    fs: fsspec.AbstractFileSystem,
    version_path: str,
    manifest: IndexManifest,
    remove: set[int],
) -> np.ndarray:
    """Up to 10,000 of the vectors that stay (for the drift comparison), read from the
    shards' first rows until there are enough."""
    blocks, have = [], 0
    removed = np.fromiter(remove, np.int64)
    assert manifest.vectors is not None
    for shard in manifest.shards:
        with fs.open(posixpath.join(version_path, shard.docs), "rb") as fh:
            iids = pq.read_table(fh, columns=[IID]).column(IID).to_numpy()[: SAMPLE * 2]
        x = read_vector_rows(fs, posixpath.join(version_path, shard.vectors or ""),
                             manifest.vectors, 0, len(iids))  # fmt: skip
        blocks.append(x[~np.isin(iids, removed)])
        have += len(blocks[-1])
        if have >= SAMPLE:
            break
    return np.concatenate(blocks)[:SAMPLE] if blocks else np.zeros((0, 1), np.float32)


def imbalance(index: Any) -> float:
    ivf = index.ivf if isinstance(index, BinaryIndex) else faiss.try_extract_index_ivf(index)
    if ivf is None or ivf.ntotal == 0:
        return 1.0
    lists = ivf.invlists
    assert lists is not None
    sizes = np.array([lists.list_size(i) for i in range(ivf.nlist)], dtype=np.float64)
    return float(sizes.size * (sizes**2).sum() / sizes.sum() ** 2)  # FAISS's imbalance factor


def measure_drift(
    indexes: list[faiss.Index], new: np.ndarray, kept: np.ndarray, before: list[float]
) -> Drift:
    """Drift figures of an IVF index receiving `new` vectors."""
    ivf = faiss.extract_index_ivf(indexes[0])

    def distance(x: np.ndarray) -> float:
        if not len(x):
            return 0.0
        d, _ = ivf.quantizer.search(np.ascontiguousarray(x, dtype=np.float32), 1)
        return (
            float(np.sqrt(np.maximum(d[:, 0], 0)).mean())
            if ivf.metric_type == faiss.METRIC_L2
            else float((1 - d[:, 0]).mean())
        )

    after = [imbalance(ix) for ix in indexes]
    return Drift(distance(new), distance(kept), float(np.mean(before)), float(np.mean(after)))
