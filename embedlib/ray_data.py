"""Ray Data interop: embed inside a Ray Data pipeline, and write any Dataset of vectors as
an embedding set that `embedlib index` takes.

    import ray
    from embedlib.ray_data import Embedder, write_embedding_set

    options = {"model": "default", "text_column": "text", "chunking": "auto"}
    ds = ray.data.read_parquet("s3://bucket/corpus/")
    ds = ds.map_batches(Embedder, fn_constructor_kwargs=options, concurrency=4,
                        batch_size=256, batch_format="pyarrow", num_cpus=1)
    write_embedding_set(ds, "s3://bucket/embeddings", embedder=options)

`Embedder` takes the embed job's options (`EmbedOptions`' fields) and does what the job
does to a batch: ids, content hashes and passthrough columns from `prepare`, chunking
(one row per chunk), the same model, backend and fingerprint, and the same part rows.
`write_embedding_set` lets Ray Data write the Parquet files in parallel, then names them
as parts, records their row counts and checksums, and writes the manifest last.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from embedlib.distributed import use_worker_env
from embedlib.embed.chunking import chunk_documents, chunk_options, chunking_record
from embedlib.embed.corpus.read import ROW, RawBatch
from embedlib.embed.documents import CHUNK, ID, TEXT_HASH, VECTOR, DocumentSpec, prepare
from embedlib.exceptions import SourceError
from embedlib.models.encoders import TextEncoder
from embedlib.models.fingerprint import STATIC, ModelFingerprint
from embedlib.options import EmbedOptions
from embedlib.sets.embedding_set import (
    EmbeddingSetManifest,
    PartEntry,
    part_file,
    part_table,
    refuse_existing_set,
)
from embedlib.storage import file_sha256

STAGING = "_ray_data"


class Embedder:
    """A callable class for `Dataset.map_batches`: each batch of rows (id, text and other
    columns) becomes the rows of an embedding set's part (id, vector, text hash, the
    passthrough columns; with chunking, one row per chunk with its number and span).
    Keyword arguments are `EmbedOptions`' fields, plus `batch_size` (of the model) and
    `num_threads`. An id column is required: a Dataset's rows have no file and row to
    name them by."""

    def __init__(
        self, *, batch_size: int = 64, num_threads: int | None = None, **options: Any
    ) -> None:
        use_worker_env()  # before the model's libraries are imported
        self.options = EmbedOptions(**options)
        o = self.options
        self.spec = DocumentSpec(text_column=o.text_column, id_column=o.id_column or ID,
                                 columns=o.columns)  # fmt: skip
        self.encoder = TextEncoder(
            o.model, normalize=o.normalize, max_seq_length=o.max_seq_length, dims=o.dims,
            batch_size=batch_size, num_threads=num_threads, backend=o.backend,
        )  # fmt: skip
        self.chunking = chunk_options(o)

    @property
    def fingerprint(self) -> ModelFingerprint:
        return self.encoder.fingerprint

    def __call__(self, batch: pa.Table | Mapping[str, Any]) -> pa.Table:
        table = batch if isinstance(batch, pa.Table) else pa.table(dict(batch))
        if self.spec.id_column not in table.column_names:
            raise SourceError(
                f"the rows have no id column {self.spec.id_column!r} (they have "
                f"{', '.join(table.column_names)}); name it with id_column="
            )
        table = table.add_column(0, ROW, pa.array(np.arange(table.num_rows), pa.int64()))
        docs = prepare(RawBatch(table), self.spec, relpath="dataset")
        if self.chunking is not None:
            docs = chunk_documents(docs, self.encoder.chunker(self.chunking), self.spec.text_column)
        if docs.quarantined:
            bad = docs.quarantined[0]
            raise SourceError(
                f"{len(docs.quarantined)} rows cannot be embedded (row {bad.row} of the batch: "
                f"{bad.reason}, {bad.detail}); fix or filter them before map_batches"
            )
        vectors, _ = self.encoder.encode(docs.texts)
        return part_table(docs, vectors, self.options.dtype)


def write_embedding_set(
    ds: Any,
    out: str,
    *,
    embedder: Mapping[str, Any] | None = None,
    name: str = "ray-data",
    metric: str | None = None,
    text_column: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> EmbeddingSetManifest:
    """Write the Dataset `ds` (id + fixed-size float vector, and any other columns) as an
    embedding set at `out` (a new location). `embedder`: the options `ds` was embedded
    with by `Embedder` (its model's fingerprint, metric and chunking are recorded, so the
    set is one `embedlib embed` could have written); without it the vectors have no text
    model (fingerprint precision "static", named `name`, digesting the parts)."""
    fs, path = url_to_fs(out, **(storage_options or {}))
    refuse_existing_set(fs, path, out)
    names = list(ds.schema().names)
    if ID not in names or VECTOR not in names:
        raise SourceError(
            f"write_embedding_set needs columns {ID!r} and {VECTOR!r}; the Dataset has "
            f"{', '.join(names)}"
        )
    staging = posixpath.join(path, STAGING)
    ds.map_batches(_fixed_size_vectors, batch_format="pyarrow").write_parquet(
        fs.unstrip_protocol(staging)
    )
    written = sorted(p for p in fs.find(staging) if p.endswith(".parquet"))
    if not written:
        raise SourceError(f"the Dataset written to {out!r} holds no rows")
    parts, dim, documents, digest = [], 0, 0, hashlib.sha256()
    for n, src in enumerate(written):
        target = posixpath.join(path, part_file(n))
        fs.mv(src, target)
        with fs.open(target, "rb") as fh:
            pf = pq.ParquetFile(fh)
            schema, rows = pf.schema_arrow, pf.metadata.num_rows
            if CHUNK in schema.names:  # one document per first chunk
                chunks = pf.read(columns=[CHUNK]).column(CHUNK).to_numpy(zero_copy_only=False)
                documents += int((chunks == 0).sum())
            else:
                documents += rows
        _check_schema(schema, out)
        dim = schema.field(VECTOR).type.list_size
        sha = file_sha256(fs, target)
        digest.update(sha.encode())
        parts.append(PartEntry(n, part_file(n), rows, fs.size(target), sha, None))
    fs.rm(staging, recursive=True)
    options = EmbedOptions(**embedder) if embedder is not None else None
    if embedder is not None:
        fingerprint = Embedder(**embedder).fingerprint
    else:
        fingerprint = ModelFingerprint(
            name=name, weights_sha256=digest.hexdigest(), dim=dim, normalize=False,
            max_seq_length=0, precision=STATIC,
        )  # fmt: skip
    if fingerprint.dim != dim:
        raise SourceError(
            f"the vectors are {dim}-d; the model {fingerprint.name} gives {fingerprint.dim}"
        )
    has_hash = TEXT_HASH in schema.names
    manifest = EmbeddingSetManifest(
        model=fingerprint,
        metric=metric or (options.metric if options else "cosine"),  # type: ignore[arg-type]
        parts=tuple(parts),
        counts={"documents": documents, "chunks": sum(p.rows for p in parts)},
        source={"url": name, "kind": "ray-data"},
        dtype=options.dtype if options else "float32",
        text_column=text_column or (options.text_column if options else None),
        options=options.to_dict() if options else None,
        hash={"column": TEXT_HASH, "algorithm": "blake2b-128", "of": "the embedded text"}
        if has_hash
        else None,
        chunking=chunking_record(options) if options else None,
    )
    manifest.write(fs, path)
    return manifest


def _fixed_size_vectors(batch: pa.Table) -> pa.Table:
    """The batch with its vector column as fixed_size_list<float> (Ray Data keeps numpy
    vectors as a tensor extension type, and lists as variable-size lists)."""
    column = batch.column(VECTOR)
    if pa.types.is_fixed_size_list(column.type):
        return batch
    rows = column.to_numpy()
    matrix = np.asarray(np.stack(list(rows)) if rows.dtype == object else rows, np.float32)
    if matrix.ndim != 2:
        raise SourceError(f"the vector column must hold vectors of one length, got {column.type}")
    at = batch.column_names.index(VECTOR)
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])
    return batch.set_column(at, VECTOR, fixed).set_column(
        batch.column_names.index(ID), ID, batch.column(ID).cast(pa.string())
    )


def _check_schema(schema: pa.Schema, out: str) -> None:
    kind = schema.field(VECTOR).type
    if not pa.types.is_fixed_size_list(kind) or not pa.types.is_floating(kind.value_type):
        raise SourceError(f"{out!r}: the vector column is {kind}, not fixed-size floats")
