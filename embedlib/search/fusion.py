"""Fusing a dense and a lexical ranking into one (hybrid search).

Both take each list's global ranking (merged across shards first, never per shard),
best first, as (score, int64 id) pairs, and return the fused pairs, best first, ties
by the lower id:

- relative (the default): a convex combination (Bruch et al. 2023 found one beats RRF)
  of scores on scales that mean the same for every query: the cosine similarity
  (clipped at 0), and the BM25 score over the best the query could reach (the sum of
  its terms' idfs, the bound of Lucene's BM25; a term the corpus lacks counted at
  document frequency 0). A document matching one common
  word of a three-word query then gets a small lexical share, where RRF or min-max
  scaling would give it full marks for being first in the lexical list, and outrank a
  first-place dense hit with no lexical match. Indexes whose dense scores are not
  cosines (dot, L2) have them min-max normalized;
- reciprocal rank fusion (Cormack et al. 2009; Qdrant, LanceDB, Elasticsearch): an id
  scores sum(1 / (k + rank)) over the lists it is in, rank counted from 1;
- min-max: each list's scores min-max normalized to [0, 1] (Weaviate's relative score
  fusion; L2 distances turned so that closer is higher).
The weighted ones score alpha * dense + (1 - alpha) * lexical, 0 for a list an id is
not in.
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
    """alpha * min-max normalized dense score + (1 - alpha) * min-max normalized lexical."""
    return _convex(
        normalized(dense, lower_is_better=dense_lower_is_better), normalized(lexical), alpha
    )


def fuse_relative(
    dense: Pairs, lexical: Pairs, alpha: float, *, metric: str, attainable: float
) -> Pairs:
    """alpha * cosine (clipped at 0; other metrics min-max normalized) + (1 - alpha) *
    BM25 / `attainable` (the query's best possible score, at most 1)."""
    dense_part = (
        {iid: max(0.0, s) for s, iid in dense}
        if metric == "cosine"
        else normalized(dense, lower_is_better=metric == "l2")
    )
    lexical_part = {iid: min(1.0, s / attainable) for s, iid in lexical} if attainable > 0 else {}
    return _convex(dense_part, lexical_part, alpha)


def _convex(dense: dict[int, float], lexical: dict[int, float], alpha: float) -> Pairs:
    scores = {iid: alpha * x for iid, x in dense.items()}
    for iid, x in lexical.items():
        scores[iid] = scores.get(iid, 0.0) + (1 - alpha) * x
    return _ordered(scores)
