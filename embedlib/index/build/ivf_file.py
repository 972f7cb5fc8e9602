"""Merging IVF index files list by list on disk, never a whole index in memory.

A FAISS IVF file ends with its inverted lists (`ArrayInvertedLists`, fourcc "ilar"):
nlist and code size, the list sizes ("full": one per list; "sprs": (list, size) pairs
of the non-empty lists), then each non-empty list's codes followed by its int64 ids.
Partial indexes cut from one trained index share everything before that section but
their vector count. The merged file is the trained index's header with the total count,
then every list's entries from each partial in turn: byte for byte what `merge_from`
followed by `write_index` gives (tested), with one list's bytes in memory at a time.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

import faiss
import numpy as np

from embedlib.index.binary import BinaryIndex

_LISTS = b"ilar"
_EMPTY_LISTS_BYTES = 32  # "ilar", nlist, code size, "sprs", an empty size vector
_READ_BUFFER = 1 << 20


@dataclass
class _Lists:
    nlist: int
    code_size: int
    sizes: np.ndarray  # entries per list


def streamable(index: Any) -> bool:
    """Whether files of this (trained, empty) index can be merged by `merge_ivf_files`:
    an IVF whose file ends with its array inverted lists (binary ones merge in memory)."""
    if isinstance(index, BinaryIndex):
        return False
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None or index.ntotal:
        return False
    raw = faiss.serialize_index(index).tobytes()
    return raw[-_EMPTY_LISTS_BYTES : -_EMPTY_LISTS_BYTES + 4] == _LISTS


def merge_ivf_files(trained_path: str, part_paths: list[str], out_path: str) -> int:
    """Write the merge of partial IVF files (all filled from `trained_path`, ids kept) to
    `out_path`, in the order given; return the vector count."""
    trained = faiss.read_index(trained_path)
    header_bytes = len(faiss.serialize_index(trained)) - _EMPTY_LISTS_BYTES
    parts = [open(p, "rb", buffering=_READ_BUFFER) for p in part_paths]  # noqa: SIM115
    try:
        lists = [
            _read_lists(fh, header_bytes, path) for fh, path in zip(parts, part_paths, strict=True)
        ]
        nlist, code_size = lists[0].nlist, lists[0].code_size
        if any((p.nlist, p.code_size) != (nlist, code_size) for p in lists):
            raise ValueError(f"partial indexes {part_paths} do not share one trained index")
        sizes = np.stack([p.sizes for p in lists]).sum(axis=0, dtype=np.uint64)
        with open(out_path, "wb", buffering=_READ_BUFFER) as out:
            out.write(_header(trained, int(sizes.sum()), header_bytes))
            out.write(_LISTS + struct.pack("<QQ", nlist, code_size))
            nonempty = np.flatnonzero(sizes)
            if len(nonempty) > nlist // 2:
                _write_vector(out, b"full", sizes)
            else:
                _write_vector(out, b"sprs", np.stack([nonempty, sizes[nonempty]], axis=1).ravel())
            for lst in nonempty:
                for fh, p in zip(parts, lists, strict=True):
                    out.write(fh.read(int(p.sizes[lst]) * code_size))
                for fh, p in zip(parts, lists, strict=True):
                    out.write(fh.read(int(p.sizes[lst]) * 8))
        return int(sizes.sum())
    finally:
        for fh in parts:
            fh.close()


def _header(index: faiss.Index, ntotal: int, header_bytes: int) -> bytes:
    """Everything before the inverted lists, as the merged index writes it: the trained
    index with its vector count (on every level of wrappers) set to `ntotal`."""
    level = index
    while True:
        level.ntotal = ntotal
        if not hasattr(level, "index") or level.index is None:
            break
        level = faiss.downcast_index(level.index)
    ivf = faiss.extract_index_ivf(index)
    ivf.ntotal = ntotal
    raw = faiss.serialize_index(index).tobytes()
    if len(raw) - _EMPTY_LISTS_BYTES != header_bytes:
        raise ValueError("the trained index's header changed size with its vector count")
    return raw[:header_bytes]


def _read_lists(fh: BinaryIO, offset: int, path: str) -> _Lists:
    """The list sizes of a partial file; leaves `fh` at the first list's bytes."""
    fh.seek(offset)
    if fh.read(4) != _LISTS:
        raise ValueError(f"{path!r} is not an IVF file of the trained index (no lists at {offset})")
    nlist, code_size = struct.unpack("<QQ", fh.read(16))
    kind = fh.read(4)
    (count,) = struct.unpack("<Q", fh.read(8))
    values = np.frombuffer(fh.read(8 * count), dtype="<u8")
    if kind == b"full":
        sizes = values.astype(np.uint64)
    elif kind == b"sprs":
        sizes = np.zeros(nlist, np.uint64)
        sizes[values[0::2].astype(np.int64)] = values[1::2]
    else:
        raise ValueError(f"{path!r}: unknown inverted-list layout {kind!r}")
    return _Lists(nlist, code_size, sizes)


def _write_vector(out: BinaryIO, kind: bytes, values: np.ndarray) -> None:
    out.write(kind + struct.pack("<Q", len(values)) + values.astype("<u8").tobytes())
