"""A build's staging folder, where the phases of an index build meet.

versions/.staging-<uuid>/trained.faiss             the trained, empty index (train)
versions/.staging-<uuid>/_partials/unit-NNNNN.*    partial indexes, docs rows, vectors (add)
versions/.staging-<uuid>/shard-NNNNN.faiss          serving shards (merge)
versions/.staging-<uuid>/docs-NNNNN.parquet         their docs tables (merge)
versions/.staging-<uuid>/vectors-NNNNN.npy          their vector files (merge)
versions/.staging-<uuid>/manifest.json              written last (build), then published
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow as pa

from embedlib.embed.images import IMAGE
from embedlib.index.build.plan import IndexPlan
from embedlib.index.store.vectors import VectorCodec, vectors_file
from embedlib.index.store.version import TRAINED, ShardEntry, docs_file, shard_file
from embedlib.options import Metric
from embedlib.storage import file_sha256

PARTIALS = "_partials"
K_TUNE = 10  # the build measures recall@10
DOCS_ROW_GROUP = 8192
IMAGE_ROW_GROUP = 32  # docs tables holding images: a hit's image is read with its group


def docs_row_group(schema: pa.Schema) -> int:
    """Rows per row group of a docs table: fewer where each row holds an image file."""
    return IMAGE_ROW_GROUP if IMAGE in schema.names else DOCS_ROW_GROUP


@dataclass(frozen=True)
class BuildContext:
    """What every task of a build shares."""

    fs: fsspec.AbstractFileSystem
    staging: str
    dim: int
    metric: Metric
    plan: IndexPlan
    queries: np.ndarray  # tuning queries, as indexed (normalized for cosine)
    streamable: bool = False  # partial files merge list by list on disk (IVF)
    codec: VectorCodec = field(default_factory=VectorCodec)  # the vector files' (set by training)

    @property
    def trained(self) -> str:
        return posixpath.join(self.staging, TRAINED)

    def partial(self, name: str, ext: str) -> str:
        """A partial file of an add task: `name`.faiss, .parquet or .npy."""
        return posixpath.join(self.staging, PARTIALS, f"{name}.{ext}")


def shard_entry(ctx: BuildContext, shard: int, count: int) -> ShardEntry:
    """The manifest entry of a finished serving shard, with its files' checksums."""
    faiss_name, docs_name, vectors_name = shard_file(shard), docs_file(shard), vectors_file(shard)
    return ShardEntry(
        shard=shard,
        file=faiss_name,
        count=count,
        sha256=file_sha256(ctx.fs, posixpath.join(ctx.staging, faiss_name)),
        docs=docs_name,
        docs_sha256=file_sha256(ctx.fs, posixpath.join(ctx.staging, docs_name)),
        vectors=vectors_name,
        vectors_sha256=file_sha256(ctx.fs, posixpath.join(ctx.staging, vectors_name)),
    )
