"""Choosing a FAISS index from N, d, the memory budget and the metric, and how the
vectors are kept on disk and rescored.

Rules follow the FAISS guidelines and autofaiss: exact (Flat) search for tiny sets;
otherwise IVF with K = a power of two near 4*sqrt(N) (within the guidelines' 4..16*sqrt(N)
range, at least 39 training points per centroid, at most MAX_NLIST lists so training
stays within minutes on a laptop), storing in RAM the codes that fit the budget: full
vectors, SQ8 codes (d bytes), or 4-bit PQ codes read by FAISS's fast-scan kernels (m/2
bytes; m <= d/4 sub-quantizers, as many as fit: they train in seconds where 8-bit PQ
with 64 sub-quantizers took a minute on 65k vectors, and rescoring recovers the rest).

Every index also keeps each vector once on disk (`store/vectors.py`): float32, float16
or int8. An index of compressed codes rescores the top `rescore x k` candidates exactly
from that file (the field's recipe: sentence-transformers' embedding-quantization study,
Qdrant's oversampling), so recall does not drop with the budget; the build tunes the
factor like nprobe. The automatic plan stays in the IVF/Flat family because those
indexes merge and support removal; HNSW is used only when named.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

import faiss

from embedlib.exceptions import IndexPlanError
from embedlib.index.binary import is_binary_factory
from embedlib.index.store.vectors import VECTOR_DTYPES, VectorDtype
from embedlib.options import Metric
from embedlib.storage import human

Compression = Literal["none", "sq8", "pq", "binary"]
COMPRESSIONS: tuple[str, ...] = ("auto", "none", "sq8", "pq", "binary")

TINY = 10_000  # below this many vectors, exact search is fast enough
MIN_POINTS_PER_CENTROID = 39
TRAIN_POINTS_PER_CENTROID = 64
MAX_TRAIN = 400_000  # training vectors at most (>= 39 per list always)
MAX_NLIST = 8192  # IVF lists at most in automatic plans: k-means of 8192 x 320k trains in minutes
ID_BYTES = 8
DEFAULT_RESCORE = 4  # candidates rescored per result (tuned up from here to the target recall)
PQ8_MIN_TRAIN = 256  # FAISS trains 256 centroids per 8-bit sub-quantizer
PQ4_MIN_TRAIN = 16  # and 16 per 4-bit one (fewer vectors than that: SQ8 codes)
CALIBRATION_ROWS = 10_000  # an int8 vector store's ranges, for indexes that train on nothing


@dataclass(frozen=True)
class IndexPlan:
    """The chosen index and why."""

    factory: str
    metric: Metric
    nlist: int  # IVF lists; 0 for non-IVF indexes
    train_size: int  # vectors to train on; 0 when no training is needed
    bytes_estimate: int
    reason: str
    store_vectors: VectorDtype = "float32"  # the vector file's precision
    rescore: int = 0  # candidates per result rescored from the vector file (0: none)

    @property
    def mergeable(self) -> bool:
        """IVF and Flat partial indexes merge; HNSW and other graphs do not."""
        return "HNSW" not in self.factory and "NSG" not in self.factory

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def compressed(self) -> bool:
        """Whether the index holds approximate codes (its distances need rescoring)."""
        return is_binary_factory(self.factory) or any(
            code in self.factory for code in ("SQ", "PQ", "LSH", "RaBitQ")
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexPlan:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


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
    k = min(MAX_NLIST, 2 ** round(math.log2(4 * math.sqrt(n))))
    while k > 1 and n < MIN_POINTS_PER_CENTROID * k:
        k //= 2
    return max(1, k)


def _pq_m(d: int, n: int, budget: int, centroid_bytes: int) -> int | None:
    """The most 4-bit PQ sub-quantizers (even, dividing d, at most d/4: FAISS's usual
    fast-scan choice) whose codes (m/2 bytes) fit the budget."""
    for m in sorted((m for m in range(2, d // 4 + 1, 2) if d % m == 0), reverse=True):
        if n * (m // 2 + ID_BYTES) + centroid_bytes <= budget:
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
    n: int,
    d: int,
    *,
    metric: Metric,
    memory_budget: int,
    factory: str = "auto",
    compress: str = "auto",
    store_vectors: str = "auto",
    rescore: int | str = "auto",
) -> IndexPlan:
    """Choose (or check) the index for n vectors of dimension d: the codes in RAM
    (`compress`), the vector file's precision (`store_vectors`) and the rescoring
    factor to start tuning from (`rescore`; 0: none)."""
    if n < 1:
        raise IndexPlanError("the embedding set is empty: there is nothing to index")
    if compress not in COMPRESSIONS:
        raise IndexPlanError(
            f"--compress must be one of {', '.join(COMPRESSIONS)}; got {compress!r}"
        )
    if store_vectors != "auto" and store_vectors not in VECTOR_DTYPES:
        raise IndexPlanError(
            f"--store-vectors must be auto or one of {', '.join(VECTOR_DTYPES)}; got {store_vectors!r}"
        )
    if factory != "auto":
        if compress != "auto":
            raise IndexPlanError("give either --factory or --compress, not both")
        plan = _check_factory(factory, n, d, metric, memory_budget)
    else:
        plan = _auto(n, d, metric, memory_budget, compress)
    return _with_storage(plan, n, store_vectors, rescore)


def _with_storage(plan: IndexPlan, n: int, store: str, rescore: int | str) -> IndexPlan:
    """The plan with its vector file's precision and rescoring factor: compressed codes
    are rescored (from int8 vectors unless told otherwise: float32 would take 4x the
    disk of the codes it corrects); full vectors need neither."""
    if rescore == "auto":
        factor = DEFAULT_RESCORE if plan.compressed else 0
    else:
        factor = int(rescore)
        if factor < 0:
            raise IndexPlanError(f"--rescore must be auto or a count >= 0; got {rescore!r}")
        if factor == 0 and is_binary_factory(plan.factory):
            raise IndexPlanError("binary codes are only candidates: they need --rescore >= 1")
    dtype: VectorDtype = (
        ("int8" if plan.compressed else "float32") if store == "auto" else store  # type: ignore[assignment]
    )
    train = plan.train_size
    if dtype == "int8" and train == 0:  # the int8 ranges need a sample
        train = min(n, CALIBRATION_ROWS)
    why = f"; vectors kept on disk as {dtype}"
    why += f", the top {factor}x k candidates rescored exactly from them" if factor else ""
    return replace(plan, store_vectors=dtype, rescore=factor, train_size=train,
                   reason=plan.reason + why)  # fmt: skip


def _auto(n: int, d: int, metric: Metric, memory_budget: int, compress: str) -> IndexPlan:
    if n < TINY and compress in ("auto", "none"):
        size = n * (4 * d + ID_BYTES)
        return IndexPlan(
            "IDMap2,Flat", metric, 0, 0, size, f"N={n} < {TINY}: exact search (Flat) is fast enough"
        )
    if n < TINY and compress in ("sq8", "pq"):  # codes scanned whole: no list to miss
        sub = _pq_m(d, n, 2**62, 0) or 2
        if compress == "sq8" or n < PQ4_MIN_TRAIN:
            factory, code = "IDMap2,SQ8", d
        elif n < PQ8_MIN_TRAIN:  # 8-bit sub-quantizers need 256 points: 4-bit ones 16
            factory, code = f"IDMap2,PQ{sub}x4", sub // 2
        else:
            factory, code = f"IDMap2,PQ{sub}", sub
        size = n * (code + ID_BYTES)
        return IndexPlan(factory, metric, 0, min(n, CALIBRATION_ROWS), size,
                         f"N={n} < {TINY}: {code}-byte codes scanned whole, then rescored")  # fmt: skip
    k = _nlist(n)
    train = min(n, max(MIN_POINTS_PER_CENTROID * k, min(TRAIN_POINTS_PER_CENTROID * k, MAX_TRAIN)))
    if compress == "binary":
        return _binary(n, d, metric, memory_budget, k, train)
    centroids = k * d * 4
    flat = n * (4 * d + ID_BYTES) + centroids
    sq8 = n * (d + ID_BYTES) + centroids
    why = f"N={n}, d={d}: IVF with K={k} lists (about 4*sqrt(N)), trained on {train} vectors"
    fits = f"fit the budget {human(memory_budget)}"
    if compress == "none" or (compress == "auto" and flat <= memory_budget):
        if flat > memory_budget:
            raise IndexPlanError(
                f"full vectors need {human(flat)}, over the memory budget of {human(memory_budget)}; "
                "raise --memory-budget or let --compress choose codes"
            )
        return IndexPlan(f"IVF{k},Flat", metric, k, train, flat,
                         f"{why}; full vectors ({human(flat)}) {fits}")  # fmt: skip
    if compress == "sq8" or (compress == "auto" and sq8 <= memory_budget):
        if sq8 > memory_budget:
            raise IndexPlanError(
                f"SQ8 codes need {human(sq8)}, over the memory budget of {human(memory_budget)}; "
                "raise --memory-budget or use --compress pq"
            )
        return IndexPlan(f"IVF{k},SQ8", metric, k, train, sq8,
                         f"{why}; SQ8 codes ({human(sq8)}) {fits}, full vectors would need {human(flat)}")  # fmt: skip
    m = _pq_m(d, n, memory_budget, centroids)
    if m is None:
        raise IndexPlanError(
            f"{n} vectors of dimension {d} do not fit a memory budget of {human(memory_budget)} "
            f"even as 1-byte PQ codes; raise --memory-budget or use more serving shards on more machines"
        )
    pq_bytes = n * (m // 2 + ID_BYTES) + centroids
    return IndexPlan(
        f"IVF{k},PQ{m}x4fs", metric, k, train, pq_bytes,
        f"{why}; 4-bit PQ (fast scan) with {m // 2}-byte codes ({human(pq_bytes)}) {fits}, "
        f"SQ8 would need {human(sq8)}",
    )  # fmt: skip


def _binary(n: int, d: int, metric: Metric, budget: int, k: int, train: int) -> IndexPlan:
    """Sign bits (d/8 bytes) in a binary IVF (flat below TINY vectors)."""
    if metric == "l2":
        raise IndexPlanError(
            "binary codes approximate angles: use --metric cosine or dot with --compress binary"
        )
    if d % 8:
        raise IndexPlanError(f"binary codes need a dimension divisible by 8; this set's is {d}")
    code = d // 8
    if n < TINY:
        size = n * (code + ID_BYTES)
        return IndexPlan(
            "BFlat",
            metric,
            0,
            0,
            size,
            f"N={n} < {TINY}: {code}-byte sign codes, searched exhaustively",
        )
    size = n * (code + ID_BYTES) + k * code
    if size > budget:
        raise IndexPlanError(
            f"binary codes need {human(size)}, over the memory budget of {human(budget)}; "
            "raise --memory-budget or use more serving shards on more machines"
        )
    return IndexPlan(
        f"BIVF{k}", metric, k, train, size,
        f"N={n}, d={d}: binary IVF with K={k} lists, {code}-byte sign codes ({human(size)}), trained on {train} vectors",
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
