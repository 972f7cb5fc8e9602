"""Choosing a FAISS index from N, d, the memory budget and the metric.

Rules follow the FAISS guidelines and autofaiss: exact (Flat) search for tiny sets;
otherwise IVF with K = a power of two near 4*sqrt(N) (within the guidelines' 4..16*sqrt(N)
range, at least 39 training points per centroid), storing full vectors when they fit the
budget, SQ8 codes (d bytes) when not, and OPQ+PQ codes when even SQ8 does not fit. The
automatic plan stays in the IVF/Flat family because those indexes merge and support
removal; HNSW is used only when named.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

import faiss

from embedlib.exceptions import IndexPlanError
from embedlib.options import Metric
from embedlib.storage import human

TINY = 10_000  # below this many vectors, exact search is fast enough
MIN_POINTS_PER_CENTROID = 39
TRAIN_POINTS_PER_CENTROID = 64
ID_BYTES = 8


@dataclass(frozen=True)
class IndexPlan:
    """The chosen index and why."""

    factory: str
    metric: Metric
    nlist: int  # IVF lists; 0 for non-IVF indexes
    train_size: int  # vectors to train on; 0 when no training is needed
    bytes_estimate: int
    reason: str

    @property
    def mergeable(self) -> bool:
        """IVF and Flat partial indexes merge; HNSW and other graphs do not."""
        return "HNSW" not in self.factory and "NSG" not in self.factory

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexPlan:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def faiss_metric(metric: Metric) -> int:
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def parse_bytes(text: str | int) -> int:
    """'4GB', '512MiB', '1.5G', 1000 -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(i?B?)\s*", text, flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot read a size from {text!r}: use e.g. 4GB, 512MB, 2G")
    number, unit, binary = float(m.group(1)), m.group(2).upper(), "i" in m.group(3).lower()
    base = 1024 if binary else 1000
    return int(number * base ** " KMGT".index(unit or " "))


def _nlist(n: int) -> int:
    k = 2 ** round(math.log2(4 * math.sqrt(n)))
    while k > 1 and n < MIN_POINTS_PER_CENTROID * k:
        k //= 2
    return max(1, k)


def _pq_m(d: int, n: int, budget: int, centroid_bytes: int) -> int | None:
    """The largest PQ code size (bytes) dividing d that fits the budget."""
    for m in sorted((m for m in range(1, d + 1) if d % m == 0 and m <= 64), reverse=True):
        if n * (m + ID_BYTES) + centroid_bytes <= budget:
            return m
    return None


def estimate_bytes(factory: str, n: int, d: int) -> int:
    """Approximate RAM of `factory` holding n vectors of dimension d."""
    index = faiss.index_factory(d, factory)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return n * (ivf.code_size + ID_BYTES) + ivf.nlist * d * 4
    hnsw = re.search(r"HNSW(\d+)", factory)
    if hnsw:
        m = int(hnsw.group(1))
        code = d if "SQ8" in factory else 4 * d
        return n * (code + 2 * m * 4 + ID_BYTES)
    code = index.sa_code_size() if hasattr(index, "sa_code_size") else 4 * d
    return n * (max(code, 1) + ID_BYTES)


def plan_index(
    n: int, d: int, *, metric: Metric, memory_budget: int, factory: str = "auto"
) -> IndexPlan:
    """Choose (or check) the index for n vectors of dimension d."""
    if n < 1:
        raise IndexPlanError("the embedding set is empty: there is nothing to index")
    if factory != "auto":
        return _check_factory(factory, n, d, metric, memory_budget)
    if n < TINY:
        size = n * (4 * d + ID_BYTES)
        return IndexPlan(
            "IDMap2,Flat", metric, 0, 0, size, f"N={n} < {TINY}: exact search (Flat) is fast enough"
        )
    k = _nlist(n)
    train = min(n, TRAIN_POINTS_PER_CENTROID * k)
    centroids = k * d * 4
    flat = n * (4 * d + ID_BYTES) + centroids
    why = f"N={n}, d={d}: IVF with K={k} lists (about 4*sqrt(N)), trained on {train} vectors"
    if flat <= memory_budget:
        return IndexPlan(
            f"IVF{k},Flat",
            metric,
            k,
            train,
            flat,
            f"{why}; full vectors fit the budget ({human(flat)} <= {human(memory_budget)})",
        )
    sq8 = n * (d + ID_BYTES) + centroids
    if sq8 <= memory_budget:
        return IndexPlan(
            f"IVF{k},SQ8",
            metric,
            k,
            train,
            sq8,
            f"{why}; full vectors need {human(flat)} > budget {human(memory_budget)}, SQ8 codes need {human(sq8)}",
        )
    m = _pq_m(d, n, memory_budget, centroids)
    if m is None:
        raise IndexPlanError(
            f"{n} vectors of dimension {d} do not fit a memory budget of {human(memory_budget)} "
            f"even as 1-byte PQ codes; raise --memory-budget or use more serving shards on more machines"
        )
    pq_bytes = n * (m + ID_BYTES) + centroids
    return IndexPlan(
        f"OPQ{m},IVF{k},PQ{m}", metric, k, train, pq_bytes,
        f"{why}; SQ8 needs {human(sq8)} > budget {human(memory_budget)}: OPQ+PQ with {m}-byte codes ({human(pq_bytes)})",
    )  # fmt: skip


def _check_factory(factory: str, n: int, d: int, metric: Metric, budget: int) -> IndexPlan:
    try:
        index = faiss.index_factory(d, factory, faiss_metric(metric))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else str(e)
        raise IndexPlanError(
            f"FAISS rejects the factory string {factory!r} for d={d}: {first}"
        ) from e
    ivf = faiss.try_extract_index_ivf(index)
    nlist = int(ivf.nlist) if ivf is not None else 0
    if nlist and n < nlist:
        raise IndexPlanError(
            f"{factory!r} has {nlist} lists but there are only {n} vectors to train on; use fewer lists, e.g. IVF{_nlist(n)},Flat"
        )
    needs_training = not index.is_trained
    train = (
        min(n, max(TRAIN_POINTS_PER_CENTROID * max(nlist, 1), 10_000 if needs_training else 0))
        if needs_training
        else 0
    )
    size = estimate_bytes(factory, n, d)
    if size > budget:
        raise IndexPlanError(
            f"{factory!r} needs about {human(size)} for {n} vectors of dimension {d}, over the "
            f"memory budget of {human(budget)}; raise --memory-budget or choose a compressed "
            f"factory (e.g. IVF{_nlist(n)},SQ8 or OPQ16,IVF{_nlist(n)},PQ16)"
        )
    wrapped = factory if (ivf is not None or factory.startswith("IDMap")) else f"IDMap2,{factory}"
    return IndexPlan(wrapped, metric, nlist, train, size, f"factory {factory!r} given by the user")
