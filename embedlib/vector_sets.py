"""Embedding sets made from vectors held in memory: imported or trained word vectors,
recommender item factors. They have no text model: the fingerprint names the vectors'
origin with precision "static", and digests the ids and vectors themselves."""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from embedlib.documents import ID, VECTOR
from embedlib.exceptions import EmbedlibError
from embedlib.models import STATIC, ModelFingerprint
from embedlib.store import MANIFEST, file_sha256, manifest_header, write_json_atomic

PART_ROWS = 100_000


def write_vector_set(
    out: str,
    ids: Sequence[str],
    vectors: np.ndarray,
    *,
    name: str,
    metric: str,
    source: Mapping[str, Any],
    columns: Mapping[str, Sequence[Any]] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `ids` and their `vectors` (plus optional passthrough `columns`) as an
    embedding set at `out` (a new location); returns its manifest."""
    fs, path = url_to_fs(out, **(storage_options or {}))
    if fs.exists(posixpath.join(path, MANIFEST)):
        raise EmbedlibError(f"{out!r} already holds an embedding set; write to a new location")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(ids) != len(vectors):
        raise ValueError(f"{len(ids)} ids for vectors of shape {vectors.shape}")
    digest = hashlib.sha256()
    fs.makedirs(path, exist_ok=True)
    shards = []
    for n, start in enumerate(range(0, len(ids), PART_ROWS)):
        part_ids = [str(i) for i in ids[start : start + PART_ROWS]]
        block = vectors[start : start + PART_ROWS]
        digest.update("\n".join(part_ids).encode())
        digest.update(block.tobytes())
        table = pa.table(
            {
                ID: pa.array(part_ids, pa.string()),
                VECTOR: pa.FixedSizeListArray.from_arrays(
                    pa.array(block.reshape(-1)), block.shape[1]
                ),
                **{
                    k: pa.array(list(v[start : start + PART_ROWS]))
                    for k, v in (columns or {}).items()
                },
            }
        )
        file = posixpath.join(path, f"part-{n:05d}.parquet")
        with fs.open(file, "wb") as fh:
            pq.write_table(table, fh, row_group_size=50_000)
        shards.append({
            "index": n, "file": posixpath.basename(file), "rows": len(part_ids),
            "bytes": fs.size(file), "sha256": file_sha256(fs, file), "source": source.get("url"),
        })  # fmt: skip
    fingerprint = ModelFingerprint(
        name=name, weights_sha256=digest.hexdigest(), dim=int(vectors.shape[1]),
        normalize=False, max_seq_length=0, precision=STATIC,
    )  # fmt: skip
    manifest = {
        **manifest_header(fingerprint),
        "metric": metric,
        "dtype": "float32",
        "text_column": None,
        "id_column": ID,
        "source": dict(source),
        "counts": {"documents": len(ids)},
        "shards": shards,
    }
    write_json_atomic(fs, posixpath.join(path, MANIFEST), manifest)
    return manifest
