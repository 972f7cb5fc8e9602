"""Retraining: the documents an index holds now, rebuilt with a freshly trained quantizer
as a new version."""

from __future__ import annotations

import posixpath
from collections.abc import Callable

import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from embedlib.index.build.driver import IndexOptions, IndexReport, build_from_source
from embedlib.index.store.layout import resolve
from embedlib.index.store.lock import index_lock
from embedlib.index.store.version import IndexManifest
from embedlib.options import RunOptions
from embedlib.sets.sources import RANGE_ROWS, RowRange, VectorSource


def retrain_index(
    index: str,
    *,
    options: IndexOptions | None = None,
    run: RunOptions | None = None,
    echo: Callable[[str], None] | None = None,
) -> IndexReport:
    """Rebuild the index from the documents it holds now (its docs tables: ids, texts,
    metadata, content hashes; its vector files, or the vectors of an index's docs tables
    built before vector files) with a freshly trained quantizer, as a new version.
    Without `options`, the index's own factory, shard count and seed are kept."""
    run = run or RunOptions()
    fs, root = url_to_fs(index, **run.storage_options)
    root = root.rstrip("/")
    with index_lock(fs, root, what="retrain") as lease:
        version_path = resolve(fs, root)
        manifest = IndexManifest.read(fs, version_path)
        options = options or IndexOptions(
            factory=manifest.factory, metric=manifest.metric,
            store_vectors=manifest.plan.store_vectors, rescore=manifest.plan.rescore, shards=len(manifest.shards),
            seed=manifest.seed, memory_budget=manifest.memory_budget,
            lexical=manifest.lexical is not None,
            lexical_language=manifest.lexical.language if manifest.lexical else "english",
        )  # fmt: skip
        spans: list[RowRange] = []
        for shard in manifest.shards:
            path = posixpath.join(version_path, shard.docs)
            with fs.open(path, "rb") as fh:
                rows = pq.ParquetFile(fh).metadata.num_rows
            offset = sum(p.rows for p in spans)
            vectors = posixpath.join(version_path, shard.vectors) if shard.vectors else None
            spans += [RowRange(fs, path, "parquet", a, min(a + RANGE_ROWS, rows), offset + a,
                               vectors_path=vectors, codec=manifest.vectors)
                      for a in range(0, rows, RANGE_ROWS)]  # fmt: skip
        source = {"url": fs.unstrip_protocol(version_path), "kind": "retrain",
                  "documents": manifest.ntotal}  # fmt: skip
        src = VectorSource([source["url"]], manifest.dim, spans, manifest.model,
                           manifest.metric, manifest.text_column, [source],
                           manifest.chunking, manifest.modality)  # fmt: skip
        return build_from_source(src, index, options=options, run=run, echo=echo, lease=lease)
