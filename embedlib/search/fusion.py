"""Fusing a dense and a lexical ranking into one (hybrid search): one small object per
strategy, found by name in `FUSIONS` (a query's `fusion`).

Each takes the two global rankings (merged across shards first, never per shard), best
first, as (score, int64 id) pairs, and returns the fused pairs, best first, ties by the
lower id:

- `relative` (the default): a convex combination (Bruch et al. 2023 found one beats RRF)
  of scores on scales that mean the same for every query: the cosine similarity
  (clipped at 0), and the BM25 score over the best the query could reach (the sum of
  its terms' idfs, the bound of Lucene's BM25; a term the corpus lacks counted at
  document frequency 0). A document matching one common word of a three-word query
  then gets a small lexical share, where RRF or min-max scaling would give it full
  marks for being first in the lexical list, and outrank a first-place dense hit with
  no lexical match. Indexes whose dense scores are not cosines (dot, L2) have them
  min-max normalized;
- `rrf`, reciprocal rank fusion (Cormack et al. 2009; Qdrant, LanceDB, Elasticsearch):
  an id scores sum(1 / (rrf_k + rank)) over the lists it is in, rank counted from 1;
- `minmax`: each list's scores min-max normalized to [0, 1] (Weaviate's relative score
  fusion; L2 distances turned so that closer is higher).
The weighted ones score alpha * dense + (1 - alpha) * lexical, 0 for a list an id is
not in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, get_args

from embedlib.options import Metric
from embedlib.search.query import FusionName, SearchOptions

Pairs = list[tuple[float, int]]


@dataclass(frozen=True, slots=True)
class Rankings:
    """What a fusion sees of one query: its two rankings and how to read their scores."""

    dense: Pairs
    lexical: Pairs
    metric: Metric  # the dense scores' metric
    attainable: float  # the best BM25 score the query could reach


class Fusion(Protocol):
    """A hybrid-search strategy: two rankings in, one out."""

    name: ClassVar[FusionName]

    def fuse(self, rankings: Rankings, options: SearchOptions) -> Pairs: ...


class RelativeFusion:
    """alpha * cosine (clipped at 0; other metrics min-max normalized) + (1 - alpha) *
    BM25 / the query's attainable BM25 (at most 1)."""

    name: ClassVar[FusionName] = "relative"

    def fuse(self, rankings: Rankings, options: SearchOptions) -> Pairs:
        r = rankings
        dense = (
            {iid: max(0.0, s) for s, iid in r.dense}
            if r.metric == "cosine"
            else normalized(r.dense, lower_is_better=r.metric == "l2")
        )
        lexical = (
            {iid: min(1.0, s / r.attainable) for s, iid in r.lexical} if r.attainable > 0 else {}
        )
        return _convex(dense, lexical, options.alpha)


class ReciprocalRankFusion:
    """sum(1 / (rrf_k + rank)) over the lists an id is in."""

    name: ClassVar[FusionName] = "rrf"

    def fuse(self, rankings: Rankings, options: SearchOptions) -> Pairs:
        return fuse_rrf([rankings.dense, rankings.lexical], options.rrf_k)


class MinMaxFusion:
    """alpha * min-max normalized dense score + (1 - alpha) * min-max normalized BM25."""

    name: ClassVar[FusionName] = "minmax"

    def fuse(self, rankings: Rankings, options: SearchOptions) -> Pairs:
        dense = normalized(rankings.dense, lower_is_better=rankings.metric == "l2")
        return _convex(dense, normalized(rankings.lexical), options.alpha)


FUSIONS: dict[str, Fusion] = {
    f.name: f for f in (RelativeFusion(), ReciprocalRankFusion(), MinMaxFusion())
}
assert set(FUSIONS) == set(get_args(FusionName)), "every fusion a query may name is here"


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


def _convex(dense: dict[int, float], lexical: dict[int, float], alpha: float) -> Pairs:
    scores = {iid: alpha * x for iid, x in dense.items()}
    for iid, x in lexical.items():
        scores[iid] = scores.get(iid, 0.0) + (1 - alpha) * x
    return _ordered(scores)


def _ordered(scores: dict[int, float]) -> Pairs:
    return sorted(((s, i) for i, s in scores.items()), key=lambda p: (-p[0], p[1]))
