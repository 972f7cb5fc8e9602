"""Exact (brute-force) k-NN over an embedding set, streamed so memory stays bounded.

The reference every approximate index is measured against, and the demo's search
until serving exists. Scores follow the metric: cosine and dot are similarities (higher
first), l2 is the squared Euclidean distance (lower first).
"""

from __future__ import annotations

import numpy as np

from embedlib.sets.embedding_set import EmbeddingSet


def normalize_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _scores(queries: np.ndarray, block: np.ndarray, metric: str) -> np.ndarray:
    if metric == "l2":
        return (
            (queries**2).sum(1, keepdims=True) - 2 * queries @ block.T + (block**2).sum(1)[None, :]
        )
    return queries @ block.T


def exact_search(
    embeddings: EmbeddingSet, queries: np.ndarray, *, k: int = 10, metric: str | None = None
) -> tuple[list[list[str]], np.ndarray]:
    """Top-k ids and scores for each query row, best first."""
    metric = metric or embeddings.metric
    q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    if metric == "cosine":
        q = normalize_rows(q)
    sign = 1.0 if metric == "l2" else -1.0  # sort ascending on sign * score
    best_scores = np.full((len(q), 0), np.inf, dtype=np.float32)
    best_ids = np.empty((len(q), 0), dtype=object)
    for ids, block in embeddings.iter_vectors():
        if metric == "cosine":
            block = normalize_rows(block)
        scores = sign * _scores(q, block, metric).astype(np.float32)
        all_scores = np.concatenate([best_scores, scores], axis=1)
        all_ids = np.concatenate(
            [best_ids, np.broadcast_to(np.array(ids, dtype=object), scores.shape)], axis=1
        )
        top = np.argsort(all_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(all_scores, top, axis=1)
        best_ids = np.take_along_axis(all_ids, top, axis=1)
    return [list(row) for row in best_ids], sign * best_scores
