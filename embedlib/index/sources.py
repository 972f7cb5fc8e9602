"""Vectors to index: an embedding set, a Parquet of id + vector, or a .npy with ids.

Every source is cut into `Part`s (a file and a row range) that a task can read alone,
and each row has a global int64 id: the part's offset plus the row's position. Reading
returns float32 vectors, string ids and the metadata columns that pass to the docs table.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from embedlib.documents import ID, VECTOR
from embedlib.exceptions import EmbedlibError, SourceError
from embedlib.models import ModelFingerprint
from embedlib.store import MANIFEST, read_json, vectors_of

PART_ROWS = 50_000  # rows per unit of add work


class VectorError(EmbedlibError, ValueError):
    """Vectors that cannot be indexed: NaN/inf, zero for cosine, wrong dimension."""


@dataclass(frozen=True)
class Part:
    """Rows [start, stop) of one file; global ids are offset + row."""

    fs: fsspec.AbstractFileSystem
    path: str
    kind: str  # "parquet" or "npy"
    start: int
    stop: int
    offset: int
    id_column: str = ID
    vector_column: str = VECTOR
    ids_path: str | None = None  # npy: a text file of ids, one per line

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass
class VectorSource:
    """One or more inputs, checked to agree on model and dimension."""

    urls: list[str]
    dim: int
    parts: list[Part]
    fingerprint: ModelFingerprint | None  # None: vectors a user brought, no text model
    metric: str | None  # the embedding set's metric hint
    text_column: str | None
    sources: list[dict[str, Any]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(p.rows for p in self.parts)


def _split(
    fs: fsspec.AbstractFileSystem, path: str, rows: int, offset: int, **kw: Any
) -> list[Part]:
    return [
        Part(fs, path, start=a, stop=min(a + PART_ROWS, rows), offset=offset + a, **kw)
        for a in range(0, rows, PART_ROWS)
    ]


def _parquet_dim(fs: fsspec.AbstractFileSystem, path: str, column: str, id_column: str) -> int:
    with fs.open(path, "rb") as fh:
        schema = pq.read_schema(fh)
    for name, what in ((column, "vector"), (id_column, "id")):
        if name not in schema.names:
            raise SourceError(
                f"{path!r} has no {what} column {name!r}; its columns are "
                f"{', '.join(map(repr, schema.names))}. Name it with --{what}-column."
            )
    vtype = schema.field(column).type
    if pa.types.is_fixed_size_list(vtype):
        return int(vtype.list_size)
    if pa.types.is_list(vtype) or pa.types.is_large_list(vtype):
        return -1  # variable-length lists: the dimension is checked per row
    raise SourceError(
        f"column {column!r} of {path!r} has type {vtype}; vectors must be lists of floats"
    )


def open_source(
    url: str,
    *,
    id_column: str = ID,
    vector_column: str = VECTOR,
    ids: str | None = None,
    storage_options: dict[str, Any] | None = None,
    offset: int = 0,
) -> VectorSource:
    """Open one input: an embedding set folder, a Parquet file/folder/glob, or a .npy."""
    fs, path = url_to_fs(url, **(storage_options or {}))
    path = path.rstrip("/") or path
    if fs.isdir(path) and fs.exists(posixpath.join(path, MANIFEST)):
        return _embedding_set(url, fs, path, offset)
    if path.endswith(".npy"):
        return _npy(url, fs, path, ids, offset)
    files = sorted(
        p
        for p in (fs.find(path) if fs.isdir(path) else fs.glob(path))
        if p.endswith((".parquet", ".pq"))
    )
    files = (
        [
            p
            for p in files
            if not any(x.startswith(("_", ".")) for x in posixpath.relpath(p, path).split("/"))
        ]
        if fs.isdir(path)
        else files
    )
    if not files:
        raise SourceError(
            f"no vectors at {url!r}: give an embedding set, Parquet files with id and vector columns, or a .npy"
        )
    parts: list[Part] = []
    dim = None
    for f in files:
        d = _parquet_dim(fs, f, vector_column, id_column)
        with fs.open(f, "rb") as fh:
            rows = pq.ParquetFile(fh).metadata.num_rows
        if d == -1 and rows:
            with fs.open(f, "rb") as fh:
                first = next(pq.ParquetFile(fh).iter_batches(batch_size=1, columns=[vector_column]))
            d = len(first.column(0)[0])
        if dim is None:
            dim = d
        elif d != dim:
            raise VectorError(
                f"{f!r} holds vectors of dimension {d}, the other files {dim}; index one dimension at a time"
            )
        parts += _split(
            fs,
            f,
            rows,
            offset + sum(p.rows for p in parts),
            kind="parquet",
            id_column=id_column,
            vector_column=vector_column,
        )
    return VectorSource(
        [url],
        int(dim or 0),
        parts,
        None,
        None,
        None,
        [{"url": url, "kind": "parquet", "files": len(files)}],
    )


def _embedding_set(url: str, fs: fsspec.AbstractFileSystem, path: str, offset: int) -> VectorSource:
    manifest = read_json(fs, posixpath.join(path, MANIFEST))
    parts: list[Part] = []
    for shard in manifest["shards"]:
        if shard.get("file"):
            parts += _split(
                fs,
                posixpath.join(path, shard["file"]),
                shard["rows"],
                offset + sum(p.rows for p in parts),
                kind="parquet",
            )
    fp = ModelFingerprint.from_dict(manifest["model"])
    source = {"url": url, "kind": "embedding-set", "documents": manifest["counts"]["documents"]}
    return VectorSource(
        [url],
        int(manifest["dim"]),
        parts,
        fp,
        manifest.get("metric"),
        manifest.get("text_column"),
        [source],
    )


def _npy(
    url: str, fs: fsspec.AbstractFileSystem, path: str, ids: str | None, offset: int
) -> VectorSource:
    with fs.open(path, "rb") as fh:
        shape, _, _ = _npy_header(fh)
    if len(shape) != 2:
        raise VectorError(
            f"{url!r} holds an array of shape {shape}; vectors must be a 2-D (n, d) array"
        )
    ids_path = None
    if ids is not None:
        ids_fs, ids_path = url_to_fs(ids)
        with ids_fs.open(ids_path, "rb") as fh:
            n_ids = sum(1 for _ in fh)
        if n_ids != shape[0]:
            raise VectorError(
                f"{ids!r} lists {n_ids} ids for {shape[0]} vectors in {url!r}; give one id per row"
            )
    parts = _split(fs, path, shape[0], offset, kind="npy", ids_path=ids_path)
    return VectorSource(
        [url],
        int(shape[1]),
        parts,
        None,
        None,
        None,
        [{"url": url, "kind": "npy", "rows": shape[0]}],
    )


def open_sources(urls: Sequence[str], **kw: Any) -> VectorSource:
    """Open several inputs as one; refuse inputs from different models or dimensions."""
    merged: VectorSource | None = None
    for url in urls:
        src = open_source(url, offset=merged.count if merged else 0, **kw)
        if merged is None:
            merged = src
            continue
        if src.dim != merged.dim:
            raise VectorError(
                f"{url!r} has dimension {src.dim}, {merged.urls[0]!r} has {merged.dim}; they cannot share an index"
            )
        if (src.fingerprint is None) != (merged.fingerprint is None):
            raise VectorError(
                f"{url!r} and {merged.urls[0]!r}: one has a text model and the other not; index them apart"
            )
        if src.fingerprint is not None and merged.fingerprint is not None:
            merged.fingerprint.require_compatible(
                src.fingerprint, what=repr(merged.urls[0]), other_what=repr(url)
            )
        merged.urls += src.urls
        merged.parts += src.parts
        merged.sources += src.sources
    if merged is None:
        raise SourceError("no inputs given")
    return merged


@dataclass
class PartData:
    ids: list[str]
    vectors: np.ndarray  # float32 (n, d)
    metadata: pa.Table  # passthrough columns (text included)


def read_part(part: Part, *, dim: int, rows: np.ndarray | None = None) -> PartData:
    """Read a part (or only `rows`, positions within the part) and check its vectors."""
    data = _read_npy(part) if part.kind == "npy" else _read_parquet(part)
    if rows is not None:
        data = PartData(
            [data.ids[i] for i in rows], data.vectors[rows], data.metadata.take(pa.array(rows))
        )
    if data.vectors.shape[1:] != (dim,):
        raise VectorError(
            f"{part.path!r} holds vectors of dimension {data.vectors.shape[1]}, the index has {dim}"
        )
    bad = ~np.isfinite(data.vectors).all(axis=1)
    if bad.any():
        names = [data.ids[i] for i in np.flatnonzero(bad)[:5]]
        raise VectorError(
            f"{int(bad.sum())} vectors in {part.path!r} hold NaN or infinite values (ids "
            f"{', '.join(map(repr, names))}); fix or drop them and build again"
        )
    return data


def _read_parquet(part: Part) -> PartData:
    with part.fs.open(part.path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        starts = np.cumsum(
            [0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
        )
        groups = [
            g
            for g in range(pf.num_row_groups)
            if starts[g] < part.stop and starts[g + 1] > part.start
        ]
        table = pf.read_row_groups(groups) if groups else pf.schema_arrow.empty_table()
    first = int(starts[groups[0]]) if groups else part.start
    table = table.slice(part.start - first, part.rows)
    column = table.column(part.vector_column)
    if pa.types.is_fixed_size_list(column.type):
        vectors = vectors_of(column)
    else:
        lengths = {len(v) for v in column.to_pylist() if v is not None}
        if len(lengths) > 1:
            raise VectorError(
                f"{part.path!r} holds vectors of different lengths {sorted(lengths)[:5]}"
            )
        vectors = np.asarray(column.to_pylist(), dtype=np.float32)
    ids = [str(i) for i in table.column(part.id_column).to_pylist()]
    if any(i == "None" for i in ids):
        raise VectorError(f"{part.path!r} has rows without an id in column {part.id_column!r}")
    # the content hash stays with the document: index updates compare it
    metadata = table.drop_columns(  # "_iid": an index's own ids, when its docs are rebuilt
        [c for c in (part.id_column, part.vector_column, "_iid") if c in table.column_names]
    )
    return PartData(ids, np.ascontiguousarray(vectors, dtype=np.float32), metadata)


def _read_npy(part: Part) -> PartData:
    with part.fs.open(part.path, "rb") as fh:
        shape, fortran, dtype = _npy_header(fh)
        if fortran:
            raise VectorError(
                f"{part.path!r} is stored in Fortran order; save it with np.save(np.ascontiguousarray(x))"
            )
        header = fh.tell()
        fh.seek(header + part.start * shape[1] * dtype.itemsize)
        raw = fh.read(part.rows * shape[1] * dtype.itemsize)
    vectors = np.frombuffer(raw, dtype=dtype).reshape(part.rows, shape[1]).astype(np.float32)
    if part.ids_path is None:
        ids = [str(i) for i in range(part.start, part.stop)]
    else:
        fs, path = url_to_fs(part.ids_path)
        with fs.open(path, "r") as fh:
            ids = [line.rstrip("\n") for n, line in enumerate(fh) if part.start <= n < part.stop]
    return PartData(
        ids, vectors, pa.table({"__rows": pa.array(range(part.rows))}).drop_columns(["__rows"])
    )


def _npy_header(fh: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    return np.lib.format.read_array_header_2_0(fh)
