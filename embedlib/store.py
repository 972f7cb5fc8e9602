"""The embedding set on storage: committed Parquet shards plus `manifest.json`.

Layout of an embedding set at OUT (any fsspec URL)::

    OUT/manifest.json          written last; a set without it is incomplete
    OUT/part-NNNNN.parquet     committed shards: id, vector, text_hash, passthrough
    OUT/_job.json              the job's plan, options and scan (for resume)
    OUT/_commits/part-NNNNN.json   one commit record per shard
    OUT/_attempts/...          work in progress (removed when the job completes)
    OUT/_quarantine/part-NNNNN.jsonl   rows that could not be read, with reasons

A reader that globs `OUT/*.parquet` sees exactly the committed set.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from embedlib.documents import ID, TEXT_HASH, VECTOR, Documents
from embedlib.exceptions import IncompleteEmbeddingSetError, SourceError
from embedlib.models import ModelFingerprint

MANIFEST = "manifest.json"
JOB = "_job.json"
COMMITS = "_commits"
ATTEMPTS = "_attempts"
QUARANTINE = "_quarantine"
FORMAT_NAME = "embedlib.embedding-set"
FORMAT_VERSION = 1


def manifest_header(fingerprint: ModelFingerprint) -> dict[str, Any]:
    """The fields every embedding set manifest starts with: format, versions, time, model."""
    import time

    from embedlib import __version__

    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "embedlib_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": fingerprint.to_dict(),
        "dim": fingerprint.dim,
        "normalize": fingerprint.normalize,
    }


def join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether `fs` is this machine's own filesystem (renames are atomic, paths are real)."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols


def write_json_atomic(fs: fsspec.AbstractFileSystem, path: str, data: Any) -> None:
    """Write JSON next to `path`, then move it into place, so readers see all or nothing."""
    tmp = join(posixpath.dirname(path), f".{posixpath.basename(path)}.{uuid.uuid4().hex}.tmp")
    with fs.open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
    fs.mv(tmp, path)


def read_json(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    with fs.open(path, "r") as fh:
        return json.load(fh)


def file_sha256(fs: fsspec.AbstractFileSystem, path: str) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def vector_array(vectors: np.ndarray, dtype: str) -> pa.FixedSizeListArray:
    """An (n, d) matrix as an Arrow fixed_size_list<float32|float16>[d] array."""
    flat = np.ascontiguousarray(vectors, dtype=np.float16 if dtype == "float16" else np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), vectors.shape[1])


def vectors_of(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A fixed_size_list vector column as a float32 (n, d) matrix (float16 is widened)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    dim = column.type.list_size
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32, copy=False).reshape(-1, dim)


@dataclass(frozen=True)
class ShardFile:
    rows: int
    bytes: int
    sha256: str


class ShardWriter:
    """Streams one shard's documents and vectors into a Parquet file.

    Batches usually share one schema. When a later batch brings a column or a type the
    first did not have (JSON Lines do this), it starts a new chunk; `close` then rewrites
    the chunks into one file under the unified schema. Memory stays at one batch.
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, *, dtype: str) -> None:
        self.fs = fs
        self.path = path
        self.dtype = dtype
        self._chunks: list[tuple[str, pa.Schema]] = []
        self._writer: pq.ParquetWriter | None = None
        self._handle: Any = None
        self.rows = 0

    def write(self, docs: Documents, vectors: np.ndarray) -> None:
        if len(docs) == 0:
            return
        table = pa.Table.from_arrays(
            [
                pa.array(docs.ids, pa.string()),
                vector_array(vectors, self.dtype),
                pa.array(docs.hashes, pa.string()),
                *docs.passthrough.columns,
            ],
            names=[ID, VECTOR, TEXT_HASH, *docs.passthrough.column_names],
        )
        if self._writer is not None:
            schema = self._chunks[-1][1]
            fitted = conform_table(table, schema)
            if fitted is not None:
                self._writer.write_table(fitted)
                self.rows += table.num_rows
                return
            self._close_chunk()
        self._open_chunk(table.schema)
        assert self._writer is not None
        self._writer.write_table(table)
        self.rows += table.num_rows

    def _open_chunk(self, schema: pa.Schema) -> None:
        path = f"{self.path}.chunk{len(self._chunks)}"
        self._handle = self.fs.open(path, "wb")
        self._writer = pq.ParquetWriter(self._handle, schema)
        self._chunks.append((path, schema))

    def _close_chunk(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._handle.close()
            self._writer = None

    def close(self) -> ShardFile | None:
        """Finish the file at `path`; None when no document was written."""
        self._close_chunk()
        if not self._chunks:
            return None
        if len(self._chunks) == 1:
            self.fs.mv(self._chunks[0][0], self.path)
        else:
            self._merge_chunks()
        size = int(self.fs.info(self.path)["size"])
        return ShardFile(rows=self.rows, bytes=size, sha256=file_sha256(self.fs, self.path))

    def _merge_chunks(self) -> None:
        schema = unify_schemas([s for _, s in self._chunks])
        with self.fs.open(self.path, "wb") as out, pq.ParquetWriter(out, schema) as writer:
            for path, _ in self._chunks:
                with self.fs.open(path, "rb") as fh:
                    for batch in pq.ParquetFile(fh).iter_batches():
                        fitted = conform_table(
                            pa.Table.from_batches([batch]), schema, text_fallback=True
                        )
                        assert fitted is not None
                        writer.write_table(fitted)
                self.fs.rm(path)


def unify_schemas(schemas: Sequence[pa.Schema]) -> pa.Schema:
    """One schema for all; a field whose types cannot be promoted becomes a string."""
    try:
        return pa.unify_schemas(list(schemas), promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        fields: dict[str, pa.Field] = {}
        for schema in schemas:
            for f in schema:
                if f.name not in fields:
                    fields[f.name] = f
                    continue
                try:
                    fields[f.name] = pa.unify_schemas(
                        [pa.schema([fields[f.name]]), pa.schema([f])], promote_options="permissive"
                    ).field(0)
                except (pa.ArrowInvalid, pa.ArrowTypeError):
                    fields[f.name] = pa.field(f.name, pa.string())
        return pa.schema(list(fields.values()))


def conform_table(
    table: pa.Table, schema: pa.Schema, *, text_fallback: bool = False
) -> pa.Table | None:
    """`table` with `schema`'s columns and types, or None when it cannot be made to fit."""
    if not set(table.column_names) <= set(schema.names):
        return None
    arrays = []
    for f in schema:
        if f.name not in table.column_names:
            arrays.append(pa.nulls(table.num_rows, f.type))
            continue
        col = table.column(f.name)
        if col.type == f.type:
            arrays.append(col)
            continue
        try:
            arrays.append(col.cast(f.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            if not (text_fallback and pa.types.is_string(f.type)):
                return None
            arrays.append(pa.array([_text(v) for v in col.to_pylist()], pa.string()))
    return pa.Table.from_arrays(arrays, schema=schema)


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, default=str)


class EmbeddingSet:
    """Read an embedding set written by `embed_corpus` (or any writer of this layout)."""

    def __init__(self, url: str, *, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.fs, self.path = url_to_fs(url, **(storage_options or {}))
        manifest_path = join(self.path, MANIFEST)
        if not self.fs.exists(manifest_path):
            if self.fs.exists(join(self.path, JOB)):
                raise IncompleteEmbeddingSetError(
                    f"{url!r} is an unfinished embedding set (no {MANIFEST} yet): re-run the "
                    "embed command that made it to finish it"
                )
            raise SourceError(f"{url!r} is not an embedding set: it has no {MANIFEST}")
        self.manifest: dict[str, Any] = read_json(self.fs, manifest_path)

    @property
    def fingerprint(self) -> ModelFingerprint:
        return ModelFingerprint.from_dict(self.manifest["model"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def metric(self) -> str:
        return str(self.manifest["metric"])

    @property
    def text_column(self) -> str | None:
        return self.manifest.get("text_column")

    def __len__(self) -> int:
        return int(self.manifest["counts"]["documents"])

    @property
    def files(self) -> list[str]:
        return [join(self.path, s["file"]) for s in self.manifest["shards"] if s.get("file")]

    def verify(self) -> None:
        """Check every shard file against the manifest's row count and SHA-256."""
        for shard in self.manifest["shards"]:
            if not shard.get("file"):
                continue
            path = join(self.path, shard["file"])
            if not self.fs.exists(path):
                raise SourceError(f"shard {shard['file']!r} of {self.url!r} is missing")
            digest = file_sha256(self.fs, path)
            if digest != shard["sha256"]:
                raise SourceError(
                    f"shard {shard['file']!r} of {self.url!r} does not match its checksum "
                    "(changed or corrupt since it was written); re-embed into a new location"
                )
            with self.fs.open(path, "rb") as fh:
                rows = pq.ParquetFile(fh).metadata.num_rows
            if rows != shard["rows"]:
                raise SourceError(
                    f"shard {shard['file']!r} has {rows} rows, the manifest says {shard['rows']}"
                )

    def iter_tables(
        self, columns: Sequence[str] | None = None, batch_rows: int = 8192
    ) -> Iterator[pa.Table]:
        """Yield the set in batches (shard order); vectors stay as stored."""
        for path in self.files:
            with self.fs.open(path, "rb") as fh:
                for batch in pq.ParquetFile(fh).iter_batches(
                    batch_size=batch_rows, columns=columns
                ):
                    yield pa.Table.from_batches([batch])

    def iter_vectors(self, batch_rows: int = 8192) -> Iterator[tuple[list[str], np.ndarray]]:
        """Yield (ids, float32 vectors) batches in shard order."""
        for table in self.iter_tables([ID, VECTOR], batch_rows):
            yield table.column(ID).to_pylist(), vectors_of(table.column(VECTOR))

    def read_table(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The whole set as one table (for sets that fit in memory); float32 vectors."""
        tables = list(self.iter_tables(columns))
        if not tables:
            return pa.table({ID: pa.array([], pa.string())})
        table = pa.concat_tables(tables, promote_options="permissive")
        if VECTOR in table.column_names:
            vecs = vectors_of(table.column(VECTOR))
            idx = table.column_names.index(VECTOR)
            table = table.set_column(idx, VECTOR, vector_array(vecs, "float32"))
        return table

    def read_vectors(self) -> tuple[list[str], np.ndarray]:
        """All ids and vectors (float32, in shard order), for sets that fit in memory."""
        ids: list[str] = []
        blocks: list[np.ndarray] = []
        for batch_ids, vecs in self.iter_vectors():
            ids.extend(batch_ids)
            blocks.append(vecs)
        matrix = np.concatenate(blocks) if blocks else np.zeros((0, self.dim), np.float32)
        return ids, matrix
