"""Binary codes: the sign bit of each dimension (d/8 bytes a vector, 32x smaller than
float32) in a FAISS binary index, behind the float interface the rest of embedlib uses.

`BinaryIndex` wraps `faiss.IndexBinaryIVF` ("BIVF{K}") or a flat binary index ("BFlat",
with ids): it takes float32 vectors, keeps their signs (`np.packbits(x > 0)`, the
binarization of sentence-transformers' `quantize_embeddings`), and answers Hamming
distances as scores `-distance` (higher is better, as the inner product of the cosine
and dot metrics it serves; binary codes approximate angles, so l2 is refused). Its
candidates are meant to be rescored from the vector file (`search/rescore.py`): the
planner never builds a binary index without rescoring.

FAISS's binary IVF takes `nprobe` per search but no ID selector: a filter keeping many
rows is applied to a deeper candidate list (`IndexShard`).
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

BINARY_FOURCC = b"IB"  # FAISS binary index files start with "IB.."


def is_binary_factory(factory: str) -> bool:
    return factory.startswith(("BIVF", "BFlat"))


def signs(x: np.ndarray) -> np.ndarray:
    """float32 rows -> packed sign bits (d/8 bytes a row)."""
    return np.packbits(np.asarray(x) > 0, axis=1)


class BinaryIndex:
    """A FAISS binary index holding the sign bits of float vectors."""

    def __init__(self, index: Any) -> None:
        self.index = index

    @classmethod
    def create(cls, d: int, factory: str) -> BinaryIndex:
        if d % 8:
            raise ValueError(f"binary codes need a dimension divisible by 8, got {d}")
        if factory == "BFlat":
            return cls(faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(d)))
        return cls(faiss.index_binary_factory(d, factory))

    @property
    def d(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    @property
    def ivf(self) -> Any:
        """The binary IVF (None: flat)."""
        return self.index if isinstance(self.index, faiss.IndexBinaryIVF) else None

    @property
    def nlist(self) -> int:
        return int(self.ivf.nlist) if self.ivf is not None else 0

    def train(self, x: np.ndarray) -> None:
        self.index.train(signs(x))

    def add_with_ids(self, x: np.ndarray, ids: np.ndarray) -> None:
        self.index.add_with_ids(signs(x), np.ascontiguousarray(ids, dtype=np.int64))

    def remove_ids(self, selector: Any) -> int:
        return int(self.index.remove_ids(selector))

    def merge_from(self, other: BinaryIndex) -> None:
        self.index.merge_from(other.index, 0)

    def search(self, x: np.ndarray, k: int, params: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by Hamming distance; scores are the negated distances."""
        d, i = self.index.search(signs(x), k, params=params)
        scores = -d.astype(np.float32)
        return np.where(i >= 0, scores, np.nan).astype(np.float32), i

    def search_params(self, nprobe: int | None) -> Any:
        if self.ivf is None or nprobe is None:
            return None
        params = faiss.SearchParametersIVF()
        params.nprobe = int(min(nprobe, self.nlist))
        return params

    @classmethod
    def read(cls, path: str, flags: int = 0) -> BinaryIndex:
        return cls(faiss.read_index_binary(path, flags))


def is_binary_file(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == BINARY_FOURCC
