"""Small FAISS operations used by the builder and the reader."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from typing import Any

import faiss
import fsspec
import numpy as np

from embedlib.exceptions import VectorError
from embedlib.index.binary import BinaryIndex, is_binary_factory, is_binary_file
from embedlib.storage import is_local

FAST_SCAN_FOURCC = b"IwPf"  # how FAISS files start an IndexIVFPQFastScan
AnyIndex = Any  # a faiss.Index, or a BinaryIndex (binary.py) behind the same calls


def new_index(d: int, factory: str, metric: int) -> AnyIndex:
    """An empty index of a factory string (binary ones: "BIVF{K}", "BFlat")."""
    if is_binary_factory(factory):
        return BinaryIndex.create(d, factory)
    return faiss.index_factory(d, factory, metric)


def nlist_of(index: AnyIndex) -> int:
    """IVF lists of an index (0: not an IVF)."""
    if isinstance(index, BinaryIndex):
        return index.nlist
    ivf = faiss.try_extract_index_ivf(index)
    return int(ivf.nlist) if ivf is not None else 0


def use_task_cpus() -> None:
    """Let FAISS use the threads OMP_NUM_THREADS names now (Ray sets it per task to the
    CPUs the task was given). A reused worker otherwise keeps the thread count of the
    first task that loaded FAISS there: a 2-CPU training task after 1-CPU sampling tasks
    trained on one thread (17.8 s against 11.1 s in one process)."""
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        faiss.omp_set_num_threads(int(threads))


def prepare_vectors(vectors: np.ndarray, metric: str, ids: list[str]) -> np.ndarray:
    """Vectors as the index stores them: float32, unit length for cosine."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if metric != "cosine":
        return x
    norms = np.linalg.norm(x, axis=1)
    zero = norms == 0
    if zero.any():
        names = [ids[i] for i in np.flatnonzero(zero)[:5]]
        raise VectorError(
            f"{int(zero.sum())} zero vectors cannot be normalized for cosine (ids "
            f"{', '.join(map(repr, names))}); drop them or use --metric dot or l2"
        )
    return x / norms[:, None]


def write_index(index: AnyIndex, fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Write an index file; FAISS streams it to disk (a remote store gets a local temp
    file uploaded), never a serialized copy in memory (that doubled a merge's peak)."""
    if is_local(fs):
        _write_local(index, path)
        return
    with tempfile.TemporaryDirectory(prefix="embedlib-index-") as tmp:
        local = os.path.join(tmp, "index.faiss")
        _write_local(index, local)
        fs.put_file(local, path)
        fs.invalidate_cache(path)
        if (stored := fs.size(path)) != (written := os.path.getsize(local)):
            raise OSError(f"{path} holds {stored} bytes after its upload of {written}")


def _write_local(index: AnyIndex, path: str) -> None:
    """Write through a Python file object: a full disk raises OSError at the write or the
    close that fails (FAISS's own file writer only prints "close error" when its last
    buffer cannot be written, leaving a truncated file behind a successful call)."""
    with open(path, "wb") as fh:
        writer = faiss.PyCallbackIOWriter(fh.write)  # type: ignore[attr-defined]
        if isinstance(index, BinaryIndex):
            faiss.write_index_binary(index.index, writer)
        else:
            faiss.write_index(index, writer)
        del writer  # flushes FAISS's buffer into fh before fh closes


def _read_local(path: str, flags: int = 0) -> AnyIndex:
    if is_binary_file(path):
        return BinaryIndex.read(path, flags)
    return faiss.read_index(path, flags)


def read_index_file(fs: fsspec.AbstractFileSystem, path: str) -> AnyIndex:
    """Read a whole index into memory (a remote one through a local temp file)."""
    if is_local(fs):
        return _read_local(path)
    with tempfile.TemporaryDirectory(prefix="embedlib-index-") as tmp:
        local = os.path.join(tmp, "index.faiss")
        fs.get_file(path, local)
        return _read_local(local)


def read_index_mmap(local_path: str) -> AnyIndex:
    """Open a local index file; IVF inverted lists are memory-mapped, not copied.

    IO_FLAG_MMAP_IFC maps the lists in place as plain array lists. (IO_FLAG_MMAP gives
    OnDiskInvertedLists instead, whose per-search prefetch threads cost ~0.5 ms a query:
    16x the search itself on a 200k-vector IVF shard.) Fast-scan PQ keeps its lists in
    blocks that FAISS copies out of the file: mapping it as well kept the whole file
    resident beside the copy (2x the codes: 1.3 GB of a 10M-vector server's 1.8 GB
    gateway), so those are read, not mapped. Other index types ignore the flag and are
    read whole."""
    with open(local_path, "rb") as fh:
        if fh.read(4) == FAST_SCAN_FOURCC:
            return faiss.read_index(local_path)
    return _read_local(local_path, faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)


def merge_topk(
    parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard (scores, ids) into the overall top-k, best first; missing results
    (id -1 or a NaN score) sort last."""
    d = np.concatenate([p[0] for p in parts], axis=1)
    i = np.concatenate([p[1] for p in parts], axis=1)
    worst = np.inf if metric == "l2" else -np.inf
    d = np.where((i < 0) | np.isnan(d), worst, d)
    key = d if metric == "l2" else -d
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, axis=1), np.take_along_axis(i, order, axis=1)


def merge_into(target: AnyIndex, other: AnyIndex) -> None:
    """Append `other`'s vectors (with their ids) to `target`; both share one quantizer."""
    if isinstance(target, BinaryIndex):
        target.merge_from(other)
        return
    ivf = faiss.try_extract_index_ivf(target)
    if ivf is not None:
        ivf.merge_from(faiss.extract_index_ivf(other), 0)
        target.ntotal = ivf.ntotal  # a pre-transform wrapper keeps its own count
        return
    target.merge_from(other)


def search_params(
    index: faiss.Index, *, nprobe: int | None, ef_search: int | None, selector: Any = None
) -> Any:
    """Per-call search parameters (thread-safe; the index is not modified). `selector`
    (a faiss.IDSelector over external ids) restricts the search inside FAISS. `nprobe`
    is clamped to the index's list count (more probes than lists search nothing more).
    A binary index takes no selector (see binary.py)."""
    if isinstance(index, BinaryIndex):
        return index.search_params(nprobe)
    inner: Any = None
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and (nprobe is not None or selector is not None):
        inner = faiss.SearchParametersIVF()
        if nprobe is not None:
            inner.nprobe = int(min(nprobe, ivf.nlist))
    elif "HNSW" in type(faiss.downcast_index(_inner_index(index))).__name__ and (
        ef_search is not None or selector is not None
    ):
        inner = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        if ef_search is not None:
            inner.efSearch = int(ef_search)
    elif selector is not None:
        inner = faiss.SearchParameters()
    if inner is None:
        return None
    if selector is not None:
        inner.sel = selector
    if isinstance(index, faiss.IndexPreTransform):
        outer = faiss.SearchParametersPreTransform()
        outer.index_params = inner
        outer._inner = inner  # type: ignore[attr-defined]  # keep the inner object alive as long as the outer
        return outer
    return inner


def _inner_index(index: faiss.Index) -> faiss.Index:
    """The index under IDMap / pre-transform wrappers."""
    index = faiss.downcast_index(index)
    while hasattr(index, "index") and index.index is not None:
        index = faiss.downcast_index(index.index)
    return index


def local_copy(fs: fsspec.AbstractFileSystem, path: str, folder: str) -> str:
    """A local path for `path`: itself on a local filesystem, else a copy in `folder` (a
    temporary folder of the caller's, removed with its work)."""
    if is_local(fs):
        return path
    target = os.path.join(folder, path.strip("/").replace("/", "__"))
    if not os.path.exists(target):
        fs.get(path, target)
    return target
