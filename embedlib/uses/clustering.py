"""K-means over a whole embedding set: FAISS trains the centroids on a seeded sample,
Ray tasks assign every vector (one task per part), and the result is a new embedding set
(the input stays untouched) with a `cluster` column, plus a summary per cluster (size,
the documents nearest its centroid) in `clusters.json` and the centroids in
`centroids.npy`.

For the cosine metric the vectors and centroids are unit length (spherical k-means) and
"distance" is 1 - cosine; for dot and l2 it is the squared L2 distance.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from embedlib.distributed import choose_runner, map_tasks
from embedlib.embed.documents import ID, VECTOR
from embedlib.exceptions import EmbedlibError
from embedlib.index.build.driver import SMALL_INDEX_BYTES
from embedlib.index.build.train import read_rows
from embedlib.index.faiss_ops import prepare_vectors
from embedlib.models.fingerprint import STATIC, ModelFingerprint
from embedlib.options import RunOptions
from embedlib.sets.embedding_set import (
    EmbeddingSetManifest,
    PartEntry,
    part_file,
    refuse_existing_set,
    write_document_set,
)
from embedlib.sets.sources import RowRange, VectorSource, open_source, read_range
from embedlib.storage import file_sha256, human, write_json_atomic

CLUSTER = "cluster"
DISTANCE = "centroid_distance"
SUMMARY = "clusters.json"
CENTROIDS = "centroids.npy"
DOCUMENTS = "_documents"  # a chunked input's document vectors, while clustering


@dataclass
class ClusterSummary:
    cluster: int
    size: int
    nearest: list[dict[str, Any]]  # {"id", "distance", "text"?}: nearest the centroid first


@dataclass
class ClusterReport:
    output: str
    k: int
    documents: int
    metric: str
    trained_on: int
    seconds: float
    clusters: list[ClusterSummary] = field(default_factory=list)

    def __str__(self) -> str:
        sizes = sorted((c.size for c in self.clusters), reverse=True)
        lines = [
            f"clustered set: {self.output}",
            f"  {self.documents} vectors in {self.k} clusters ({self.metric}; centroids "
            f"trained on {self.trained_on}) in {self.seconds:.1f}s",
            f"  sizes: largest {sizes[0]}, smallest {sizes[-1]}" if sizes else "  (no clusters)",
        ]
        for c in sorted(self.clusters, key=lambda c: -c.size)[:10]:
            near = ", ".join(_label(n) for n in c.nearest[:3])
            lines.append(f"  cluster {c.cluster:3d} ({c.size} vectors): {near}")
        return "\n".join(lines)


def _label(hit: dict[str, Any], width: int = 40) -> str:
    text = hit.get("text")
    return repr(text[:width]) if isinstance(text, str) else str(hit["id"])


def cluster_vectors(
    source: str,
    out: str,
    *,
    k: int,
    metric: str | None = None,
    sample: int = 100_000,
    niter: int = 20,
    seed: int = 0,
    nearest: int = 5,
    run: RunOptions | None = None,
) -> ClusterReport:
    """Cluster the vectors at `source` (an embedding set, or Parquet with id and vector
    columns) into `k` clusters and write the clustered set to `out`."""
    run = run or RunOptions()
    start = time.perf_counter()
    src = open_source(source, storage_options=run.storage_options)
    documents = None  # a set of chunks is clustered by its documents' vectors
    if src.chunking is not None:
        fs, path = url_to_fs(out, **run.storage_options)
        refuse_existing_set(fs, path, out)
        documents = posixpath.join(out.rstrip("/"), DOCUMENTS)
        if fs.exists(posixpath.join(path, DOCUMENTS)):  # left by an interrupted run
            fs.rm(posixpath.join(path, DOCUMENTS), recursive=True)
        write_document_set(source, documents, storage_options=run.storage_options)
        src = open_source(documents, storage_options=run.storage_options)
    metric = metric or src.metric or "cosine"
    if metric not in ("cosine", "dot", "l2"):
        raise ValueError(f"metric must be cosine, dot or l2, got {metric!r}")
    n = src.count
    run, _ = _resolve_runner(run, src, out)
    if k < 1 or k > n:
        raise EmbedlibError(
            f"k={k} clusters for {n} vectors: k must be between 1 and the number of vectors"
        )
    fs, path = url_to_fs(out, **run.storage_options)
    refuse_existing_set(fs, path, out)
    centroids, trained_on = train_centroids(src, k, metric=metric, sample=sample, niter=niter,
                                            seed=seed, run=run)  # fmt: skip
    fs.makedirs(path, exist_ok=True)
    text_column = src.text_column or "text"  # Parquet brought by a user: a "text" column
    calls = [(part, src.dim, centroids, metric, out, i, nearest, text_column,
              run.storage_options) for i, part in enumerate(src.ranges)]  # fmt: skip
    results: list[_Assigned] = map_tasks(_assign_part, calls, run, desc="assigning")
    sizes = np.sum([r.sizes for r in results], axis=0) if results else np.zeros(k, np.int64)
    summaries = [
        ClusterSummary(
            c,
            int(sizes[c]),
            sorted((h for r in results for h in r.nearest.get(c, [])), key=lambda h: h["distance"])[
                :nearest
            ],
        )
        for c in range(k)
    ]
    with fs.open(posixpath.join(path, CENTROIDS), "wb") as fh:
        buf = io.BytesIO()
        np.save(buf, centroids)
        fh.write(buf.getvalue())
    write_json_atomic(
        fs,
        posixpath.join(path, SUMMARY),
        {"k": k, "metric": metric, "trained_on": trained_on, "seed": seed, "niter": niter,
         "clusters": [asdict(s) for s in summaries]},
    )  # fmt: skip
    fingerprint = src.fingerprint or _vectors_fingerprint(source, src, results)
    EmbeddingSetManifest(
        model=fingerprint,
        metric=metric,  # type: ignore[arg-type]  # checked above
        text_column=src.text_column,
        source={"url": source, "kind": "clustered", "k": k, "summary": SUMMARY},
        counts={"documents": n},
        parts=tuple(PartEntry(r.index, r.file, r.rows, r.bytes, r.sha256, source) for r in results),
    ).write(fs, path)
    if documents is not None:
        fs.rm(posixpath.join(path, DOCUMENTS), recursive=True)
    return ClusterReport(out, k, n, metric, trained_on, time.perf_counter() - start, summaries)


def train_centroids(
    src: VectorSource,
    k: int,
    *,
    metric: str,
    sample: int = 100_000,
    niter: int = 20,
    seed: int = 0,
    run: RunOptions | None = None,
) -> tuple[np.ndarray, int]:
    """K-means centroids (float32, unit length for cosine) trained with FAISS on a
    seeded uniform sample of at most `sample` vectors; and the sample's size."""
    run, _ = _resolve_runner(run or RunOptions(), src)
    n = src.count
    size = min(n, max(sample, k))
    picks = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    blocks = read_rows(src, picks, run)
    x = np.concatenate([v for v, _ in blocks])
    ids = [str(i) for _, g in blocks for i in g]
    x = prepare_vectors(x, metric, ids)
    kmeans = faiss.Kmeans(
        src.dim, k, niter=niter, seed=seed, spherical=metric == "cosine",
        max_points_per_centroid=max(256, -(-size // k)), verbose=False,
    )  # fmt: skip
    kmeans.train(x)
    return np.ascontiguousarray(kmeans.centroids, dtype=np.float32), size


def _resolve_runner(run: RunOptions, src: VectorSource, *urls: str) -> tuple[RunOptions, str]:
    """Where the clustering runs ("auto": as the index build decides for its size)."""
    nbytes = 4 * src.count * src.dim
    return choose_runner(
        run, small=nbytes <= SMALL_INDEX_BYTES, work=f"clustering {human(nbytes)} of vectors",
        urls=(*urls, *src.urls),
    )  # fmt: skip


@dataclass
class _Assigned:
    index: int
    file: str
    rows: int
    bytes: int
    sha256: str
    vectors_sha256: str
    sizes: np.ndarray  # (k,) vectors per cluster in this part
    nearest: dict[int, list[dict[str, Any]]]


def assign(
    vectors: np.ndarray, centroids: np.ndarray, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """The nearest centroid of each vector and the distance to it (1 - cosine for
    cosine, squared L2 otherwise)."""
    index = (
        faiss.IndexFlatIP(centroids.shape[1])
        if metric == "cosine"
        else faiss.IndexFlatL2(centroids.shape[1])
    )
    index.add(centroids)
    scores, labels = index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
    distance = 1.0 - scores[:, 0] if metric == "cosine" else scores[:, 0]
    return labels[:, 0].astype(np.int32), distance.astype(np.float32)


def _assign_part(
    part: RowRange,
    dim: int,
    centroids: np.ndarray,
    metric: str,
    out: str,
    number: int,
    nearest: int,
    text_column: str | None,
    storage_options: dict[str, Any],
) -> _Assigned:
    """Task: label one part's vectors, write them with their cluster, and keep the
    part's `nearest` vectors closest to each centroid."""
    data = read_range(part, dim=dim)
    x = prepare_vectors(data.vectors, metric, data.ids)
    labels, distance = assign(x, centroids, metric)
    table = pa.table(
        {
            ID: pa.array(data.ids, pa.string()),
            VECTOR: pa.FixedSizeListArray.from_arrays(pa.array(data.vectors.reshape(-1)), dim),
        }
    )
    for name in data.metadata.column_names:
        if name not in (CLUSTER, DISTANCE):
            table = table.append_column(name, data.metadata.column(name))
    table = table.append_column(CLUSTER, pa.array(labels)).append_column(
        DISTANCE, pa.array(distance)
    )
    fs, path = url_to_fs(out, **storage_options)
    file = part_file(number)
    with fs.open(posixpath.join(path, file), "wb") as fh:
        pq.write_table(table, fh, row_group_size=50_000)
    has_text = text_column is not None and text_column in data.metadata.column_names
    texts = data.metadata.column(text_column).to_pylist() if has_text else None
    best: dict[int, list[dict[str, Any]]] = {}
    order = np.lexsort((distance, labels))  # by cluster, then nearest first
    for i in order:
        hits = best.setdefault(int(labels[i]), [])
        if len(hits) < nearest:
            hit: dict[str, Any] = {"id": data.ids[i], "distance": float(distance[i])}
            if texts is not None:
                hit["text"] = texts[i]
            hits.append(hit)
    digest = hashlib.sha256("\n".join(data.ids).encode())
    digest.update(np.ascontiguousarray(data.vectors).tobytes())
    full = posixpath.join(path, file)
    return _Assigned(
        number, file, len(data.ids), fs.size(full), file_sha256(fs, full), digest.hexdigest(),
        np.bincount(labels, minlength=len(centroids)), best,
    )  # fmt: skip


def _vectors_fingerprint(
    source: str, src: VectorSource, parts: list[_Assigned]
) -> ModelFingerprint:
    """For vectors brought without a model: their origin and a digest of ids + vectors."""
    digest = hashlib.sha256("".join(p.vectors_sha256 for p in parts).encode())
    return ModelFingerprint(
        name=f"vectors from {posixpath.basename(source.rstrip('/'))}",
        weights_sha256=digest.hexdigest(), dim=src.dim, normalize=False,
        max_seq_length=0, precision=STATIC,
    )  # fmt: skip
