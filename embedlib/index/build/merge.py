"""Index build, phase 4: one task per serving shard joins the shard's partial indexes
(IVF lists concatenated file to file; Flat by `merge_from`), its docs rows and its
vector files; a shard added by one task is moved into place as it is."""

from __future__ import annotations

import os
import posixpath
import tempfile

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from embedlib.index.build.ivf_file import merge_ivf_files
from embedlib.index.build.staging import BuildContext, docs_row_group, shard_entry
from embedlib.index.faiss_ops import merge_into, read_index_file, write_index
from embedlib.index.store.vectors import concat_vector_files, vectors_file
from embedlib.index.store.version import ShardEntry, docs_file, shard_file
from embedlib.sets.columns import conform_table, unify_schemas
from embedlib.storage import is_local


def merge_shard(shard: int, names: list[str], count: int, ctx: BuildContext) -> ShardEntry:
    """Task: merge a serving shard's partial indexes and docs tables into one each (a
    shard added by one task is moved into place as it is)."""
    fs = ctx.fs
    target_faiss = posixpath.join(ctx.staging, shard_file(shard))
    target_docs = posixpath.join(ctx.staging, docs_file(shard))
    target_vectors = posixpath.join(ctx.staging, vectors_file(shard))
    if len(names) == 1:
        fs.mv(ctx.partial(names[0], "faiss"), target_faiss)
        fs.mv(ctx.partial(names[0], "parquet"), target_docs)
        fs.mv(ctx.partial(names[0], "npy"), target_vectors)
        return shard_entry(ctx, shard, count)
    concat_vector_files(fs, [ctx.partial(n, "npy") for n in names], target_vectors, ctx.codec)
    if ctx.streamable:
        merge_files(fs, ctx.trained, [ctx.partial(n, "faiss") for n in names], target_faiss)
    else:
        index = read_index_file(fs, ctx.partial(names[0], "faiss"))
        for name in names[1:]:
            merge_into(index, read_index_file(fs, ctx.partial(name, "faiss")))
        write_index(index, fs, target_faiss)
        del index  # the docs below stream; the merged index need not stay
    schemas = []
    for name in names:
        with fs.open(ctx.partial(name, "parquet"), "rb") as fh:
            schemas.append(pq.read_schema(fh))
    schema = unify_schemas(schemas)
    with fs.open(target_docs, "wb") as out, pq.ParquetWriter(out, schema) as writer:
        for name in names:
            with fs.open(ctx.partial(name, "parquet"), "rb") as fh:
                for batch in pq.ParquetFile(fh).iter_batches(batch_size=docs_row_group(schema)):
                    fitted = conform_table(
                        pa.Table.from_batches([batch]), schema, text_fallback=True
                    )
                    assert fitted is not None
                    writer.write_table(fitted, row_group_size=docs_row_group(schema))
    return shard_entry(ctx, shard, count)


def merge_files(
    fs: fsspec.AbstractFileSystem, trained: str, partials: list[str], target: str
) -> None:
    """Merge partial IVF files list by list on disk (remote ones through local copies)."""
    if is_local(fs):
        merge_ivf_files(trained, partials, target)
        return
    with tempfile.TemporaryDirectory(prefix="embedlib-merge-") as tmp:
        local = [os.path.join(tmp, f"{n}.faiss") for n in range(len(partials))]
        for remote, path in zip(
            [trained, *partials], [os.path.join(tmp, "trained.faiss"), *local], strict=True
        ):
            fs.get_file(remote, path)
        merged = os.path.join(tmp, "merged.faiss")
        merge_ivf_files(os.path.join(tmp, "trained.faiss"), local, merged)
        fs.put_file(merged, target)
