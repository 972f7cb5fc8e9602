"""Fusing a dense and a lexical ranking into one (hybrid search).

Both take each list's global ranking (merged across shards first, never per shard),
best first, as (score, int64 id) pairs, and return the fused pairs, best first, ties
by the lower id:

- reciprocal rank fusion (Cormack et al. 2009; Qdrant, LanceDB, Elasticsearch): an id
  scores sum(1 / (k + rank)) over the lists it is in, rank counted from 1;
- weighted: each list's scores min-max normalized to [0, 1] (Weaviate's relative score
  fusion; L2 distances turned so that closer is higher), then alpha * dense +
  (1 - alpha) * lexical, 0 for a list an id is not in.
"""

from __future__ import annotations

from collections.abc import Sequence

Pairs = list[tuple[float, int]]


def _ordered(scores: dict[int, float]) -> Pairs:
    return sorted(((s, i) for i, s in scores.items()), key=lambda p: (-p[0], p[1]))


def fuse_rrf(lists: Sequence[Pairs], k: float) -> Pairs:
    """Reciprocal rank fusion of `lists`."""
    scores: dict[int, float] = {}
    for pairs in lists:
        for rank, (_, iid) in enumerate(pairs, 1):
            scores[iid] = scores.get(iid, 0.0) + 1.0 / (k + rank)
    return _ordered(scores)


def normalized(pairs: Pairs, *, lower_is_better: bool = False) -> dict[int, float]:
    """Scores min-max scaled to [0, 1], the best 1 (all equal: all 1)."""
    if not pairs:
        return {}
    values = [s for s, _ in pairs]
    low, high = min(values), max(values)
    span = high - low
    out = {}
    for s, iid in pairs:
        x = 1.0 if span == 0 else (s - low) / span
        out[iid] = 1.0 - x if lower_is_better and span else x
    return out


def fuse_weighted(
    dense: Pairs, lexical: Pairs, alpha: float, *, dense_lower_is_better: bool
) -> Pairs:
    """alpha * normalized dense score + (1 - alpha) * normalized lexical score."""
    scores: dict[int, float] = {}
    for iid, x in normalized(dense, lower_is_better=dense_lower_is_better).items():
        scores[iid] = alpha * x
    for iid, x in normalized(lexical).items():
        scores[iid] = scores.get(iid, 0.0) + (1 - alpha) * x
    return _ordered(scores)
