"""Vectors to index: an embedding set, a Parquet of id + vector, or a .npy with ids.

Every source is cut into `RowRange`s (a file and a row range) that a task can read alone,
and each row has a global int64 id: the span's offset plus the row's position. Reading
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

from embedlib.embed.documents import ID, VECTOR
from embedlib.exceptions import SourceError, VectorError
from embedlib.index.store.vectors import VectorCodec, read_vector_rows
from embedlib.models.fingerprint import ModelFingerprint
from embedlib.sets.columns import vectors_of
from embedlib.sets.embedding_set import EmbeddingSetManifest
from embedlib.storage import MANIFEST

RANGE_ROWS = 50_000  # rows per unit of add work


@dataclass(frozen=True)
class RowRange:
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
    vectors_path: str | None = None  # an index's docs table: its vector file (retraining)
    codec: VectorCodec | None = None  # how that file stores vectors

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass
class VectorSource:
    """One or more inputs, checked to agree on model and dimension."""

    urls: list[str]
    dim: int
    ranges: list[RowRange]
    fingerprint: ModelFingerprint | None  # None: vectors a user brought, no text model
    metric: str | None  # the embedding set's metric hint
    text_column: str | None
    sources: list[dict[str, Any]] = field(default_factory=list)
    chunking: dict[str, Any] | None = None  # rows are chunks of documents (see chunking.py)
    modality: str = "text"  # what the vectors were made from: "text" or "image"

    @property
    def count(self) -> int:
        return sum(r.rows for r in self.ranges)


def _spans(
    fs: fsspec.AbstractFileSystem, path: str, rows: int, offset: int, **kw: Any
) -> list[RowRange]:
    return [
        RowRange(fs, path, start=a, stop=min(a + RANGE_ROWS, rows), offset=offset + a, **kw)
        for a in range(0, rows, RANGE_ROWS)
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
    spans: list[RowRange] = []
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
        spans += _spans(
            fs,
            f,
            rows,
            offset + sum(p.rows for p in spans),
            kind="parquet",
            id_column=id_column,
            vector_column=vector_column,
        )
    return VectorSource(
        [url],
        int(dim or 0),
        spans,
        None,
        None,
        None,
        [{"url": url, "kind": "parquet", "files": len(files)}],
    )


def _embedding_set(url: str, fs: fsspec.AbstractFileSystem, path: str, offset: int) -> VectorSource:
    manifest = EmbeddingSetManifest.read(fs, path)
    spans: list[RowRange] = []
    for part in manifest.parts:
        if part.file:
            spans += _spans(
                fs,
                posixpath.join(path, part.file),
                part.rows,
                offset + sum(p.rows for p in spans),
                kind="parquet",
            )
    source = {"url": url, "kind": "embedding-set", "documents": manifest.documents}
    return VectorSource(
        [url],
        manifest.dim,
        spans,
        manifest.model,
        manifest.metric,
        manifest.text_column,
        [source],
        manifest.chunking,
        manifest.modality,
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
    spans = _spans(fs, path, shape[0], offset, kind="npy", ids_path=ids_path)
    return VectorSource(
        [url],
        int(shape[1]),
        spans,
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
        if src.modality != merged.modality:
            raise VectorError(
                f"{url!r} holds {src.modality} vectors and {merged.urls[0]!r} {merged.modality} "
                "vectors; index them apart (a text query searches either with a CLIP model)"
            )
        if (src.chunking is None) != (merged.chunking is None):
            raise VectorError(
                f"{url!r} and {merged.urls[0]!r}: one holds chunks of documents and the other "
                "whole documents; embed both with the same --chunking, or index them apart"
            )
        if src.fingerprint is not None and merged.fingerprint is not None:
            merged.fingerprint.require_compatible(
                src.fingerprint, what=repr(merged.urls[0]), other_what=repr(url)
            )
        merged.urls += src.urls
        merged.ranges += src.ranges
        merged.sources += src.sources
    if merged is None:
        raise SourceError("no inputs given")
    return merged


@dataclass
class RangeData:
    ids: list[str]
    vectors: np.ndarray  # float32 (n, d)
    metadata: pa.Table  # passthrough columns (text included)


def read_range(span: RowRange, *, dim: int, rows: np.ndarray | None = None) -> RangeData:
    """Read a span (or only `rows`, positions within the span) and check its vectors."""
    data = _read_npy(span) if span.kind == "npy" else _read_parquet(span)
    if rows is not None:
        data = RangeData(
            [data.ids[i] for i in rows], data.vectors[rows], data.metadata.take(pa.array(rows))
        )
    if data.vectors.shape[1:] != (dim,):
        raise VectorError(
            f"{span.path!r} holds vectors of dimension {data.vectors.shape[1]}, the index has {dim}"
        )
    bad = ~np.isfinite(data.vectors).all(axis=1)
    if bad.any():
        names = [data.ids[i] for i in np.flatnonzero(bad)[:5]]
        raise VectorError(
            f"{int(bad.sum())} vectors in {span.path!r} hold NaN or infinite values (ids "
            f"{', '.join(map(repr, names))}); fix or drop them and build again"
        )
    return data


def _read_parquet(span: RowRange) -> RangeData:
    with span.fs.open(span.path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        starts = np.cumsum(
            [0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
        )
        groups = [
            g
            for g in range(pf.num_row_groups)
            if starts[g] < span.stop and starts[g + 1] > span.start
        ]
        table = pf.read_row_groups(groups) if groups else pf.schema_arrow.empty_table()
    first = int(starts[groups[0]]) if groups else span.start
    table = table.slice(span.start - first, span.rows)
    if span.vectors_path is not None and span.codec is not None:
        vectors = read_vector_rows(span.fs, span.vectors_path, span.codec, span.start, span.stop)
    else:
        vectors = _column_vectors(table.column(span.vector_column), span.path)
    ids = [str(i) for i in table.column(span.id_column).to_pylist()]
    if any(i == "None" for i in ids):
        raise VectorError(f"{span.path!r} has rows without an id in column {span.id_column!r}")
    # the content hash stays with the document: index updates compare it
    metadata = table.drop_columns(  # "_iid": an index's own ids, when its docs are rebuilt
        [c for c in (span.id_column, span.vector_column, "_iid") if c in table.column_names]
    )
    return RangeData(ids, np.ascontiguousarray(vectors, dtype=np.float32), metadata)


def _column_vectors(column: pa.ChunkedArray, path: str) -> np.ndarray:
    if pa.types.is_fixed_size_list(column.type):
        return vectors_of(column)
    lengths = {len(v) for v in column.to_pylist() if v is not None}
    if len(lengths) > 1:
        raise VectorError(f"{path!r} holds vectors of different lengths {sorted(lengths)[:5]}")
    return np.asarray(column.to_pylist(), dtype=np.float32)


def _read_npy(span: RowRange) -> RangeData:
    with span.fs.open(span.path, "rb") as fh:
        shape, fortran, dtype = _npy_header(fh)
        if fortran:
            raise VectorError(
                f"{span.path!r} is stored in Fortran order; save it with np.save(np.ascontiguousarray(x))"
            )
        header = fh.tell()
        fh.seek(header + span.start * shape[1] * dtype.itemsize)
        raw = fh.read(span.rows * shape[1] * dtype.itemsize)
    vectors = np.frombuffer(raw, dtype=dtype).reshape(span.rows, shape[1]).astype(np.float32)
    if span.ids_path is None:
        ids = [str(i) for i in range(span.start, span.stop)]
    else:
        fs, path = url_to_fs(span.ids_path)
        with fs.open(path, "r") as fh:
            ids = [line.rstrip("\n") for n, line in enumerate(fh) if span.start <= n < span.stop]
    return RangeData(
        ids, vectors, pa.table({"__rows": pa.array(range(span.rows))}).drop_columns(["__rows"])
    )


def _npy_header(fh: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    return np.lib.format.read_array_header_2_0(fh)
