"""2-D maps of an embedding set: the vectors projected to 2-D (PCA by default, UMAP as an
option), coloured by cluster, as a scatter plot PNG and an interactive HTML page (zoom,
pan, hover text: id, cluster and the document's text).

An input that has no `cluster` column is clustered first (`clustering.cluster_vectors`,
written beside the map as a new embedding set), so `embedlib map` goes from any
embedding set or Parquet of id + vector to a map in one command.
"""

from __future__ import annotations

import io
import posixpath
import time
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from embedlib.embed.documents import ID
from embedlib.exceptions import EmbedlibError
from embedlib.extras import optional_import
from embedlib.index.faiss_ops import prepare_vectors
from embedlib.options import PROJECTIONS, RunOptions
from embedlib.sets.sources import VectorSource, open_source, read_range
from embedlib.uses.clustering import CLUSTER, cluster_vectors

PNG, HTML, POINTS, CLUSTERED = "map.png", "map.html", "points.parquet", "clustered"
HOVER_CHARS = 160


@dataclass
class MapReport:
    output: str
    points: int  # drawn
    documents: int  # in the input
    clusters: int
    projection: str
    clustered_set: str | None  # written here when the input had no cluster column
    explained_variance: float | None  # PCA: share of the variance the 2 axes keep
    seconds: float

    def __str__(self) -> str:
        kept = (
            f", {self.explained_variance:.0%} of the variance"
            if self.explained_variance is not None
            else ""
        )
        lines = [
            f"map: {posixpath.join(self.output, PNG)} and {posixpath.join(self.output, HTML)}",
            f"  {self.points} of {self.documents} points, {self.clusters} clusters, "
            f"{self.projection.upper()}{kept}, in {self.seconds:.1f}s",
        ]
        if self.clustered_set:
            lines.append(f"  clustered set (with a cluster column): {self.clustered_set}")
        return "\n".join(lines)


UMAP_MIN_POINTS = 4  # UMAP's spectral start needs a few more points than components


def draw_map(
    source: str,
    out: str,
    *,
    k: int | None = None,
    projection: str = "pca",
    max_points: int = 20_000,
    seed: int = 0,
    title: str | None = None,
    run: RunOptions | None = None,
) -> MapReport:
    """Project the vectors at `source` to 2-D and draw them, coloured by cluster, into
    `out` (map.png, map.html, points.parquet). Without a cluster column the input is
    clustered into `k` clusters first (default: up to 12), written to `out`/clustered."""
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {', '.join(PROJECTIONS)}, got {projection!r}")
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    what = "embedlib map"
    figure = optional_import("matplotlib.figure", "maps", what=what)
    plotly = optional_import("plotly.graph_objects", "maps", what=what)
    umap = (
        optional_import("umap", "maps", what=f"{what} --projection umap")
        if projection == "umap"
        else None
    )
    run = run or RunOptions()
    start = time.perf_counter()
    fs, path = url_to_fs(out, **run.storage_options)
    if fs.exists(posixpath.join(path, PNG)):
        raise EmbedlibError(f"{out!r} already holds a map; draw into a new location")
    src = open_source(source, storage_options=run.storage_options)
    clustered_set = None
    if not _has_cluster_column(src):
        clustered_set = posixpath.join(out.rstrip("/"), CLUSTERED)
        cluster_vectors(source, clustered_set, k=k or min(12, src.count), seed=seed, run=run)
        src = open_source(clustered_set, storage_options=run.storage_options)
    elif k is not None:
        raise EmbedlibError(
            f"{source!r} already has a {CLUSTER!r} column; leave out --k to draw its clusters"
        )
    metric = src.metric or "cosine"
    ids, vectors, clusters, texts = _sample(src, max_points, seed)
    xy, explained = _project(prepare_vectors(vectors, metric, ids), umap, metric, seed)
    heading = title or f"{posixpath.basename(source.rstrip('/'))}: {len(ids)} points"
    fs.makedirs(path, exist_ok=True)
    points = pa.table({ID: ids, "x": xy[:, 0], "y": xy[:, 1], CLUSTER: clusters})
    if texts is not None:
        points = points.append_column("text", pa.array(texts, pa.string()))
    with fs.open(posixpath.join(path, POINTS), "wb") as fh:
        pq.write_table(points, fh)
    with fs.open(posixpath.join(path, HTML), "w", encoding="utf-8") as fh:
        fh.write(_html(plotly, points, heading, projection))
    with fs.open(posixpath.join(path, PNG), "wb") as fh:
        fh.write(_png(figure, xy, clusters, heading, projection))
    return MapReport(
        out, len(ids), src.count, len(np.unique(clusters)), projection, clustered_set,
        explained, time.perf_counter() - start,
    )  # fmt: skip


def _has_cluster_column(src: VectorSource) -> bool:
    if not src.ranges or src.ranges[0].kind != "parquet":
        return False
    part = src.ranges[0]
    with part.fs.open(part.path, "rb") as fh:
        return CLUSTER in pq.read_schema(fh).names


def _sample(
    src: VectorSource, max_points: int, seed: int
) -> tuple[list[str], np.ndarray, np.ndarray, list[str] | None]:
    """A seeded uniform sample of at most `max_points` rows: ids, vectors, clusters, texts."""
    n = src.count
    picks = np.sort(np.random.default_rng(seed).choice(n, size=min(n, max_points), replace=False))
    ids: list[str] = []
    blocks, clusters = [], []
    text_column = src.text_column or "text"  # Parquet brought by a user: a "text" column
    texts: list[str] | None = []
    for part in src.ranges:
        lo, hi = np.searchsorted(picks, [part.offset, part.offset + part.rows])
        if hi == lo:
            continue
        data = read_range(part, dim=src.dim, rows=picks[lo:hi] - part.offset)
        ids += data.ids
        blocks.append(data.vectors)
        clusters.append(np.asarray(data.metadata.column(CLUSTER).to_numpy(), np.int32))
        if texts is not None and text_column in data.metadata.column_names:
            texts += [t or "" for t in data.metadata.column(text_column).to_pylist()]
        else:
            texts = None
    return ids, np.concatenate(blocks), np.concatenate(clusters), texts


def _project(
    x: np.ndarray, umap: ModuleType | None, metric: str, seed: int
) -> tuple[np.ndarray, float | None]:
    """2-D coordinates, by UMAP when given, else by PCA with the share of the variance
    they keep."""
    if umap is not None:
        if len(x) < UMAP_MIN_POINTS:
            raise EmbedlibError(
                f"UMAP needs at least {UMAP_MIN_POINTS} points, the set has {len(x)}; "
                "use --projection pca"
            )
        reducer = umap.UMAP(
            n_components=2,
            metric="cosine" if metric == "cosine" else "euclidean",
            random_state=seed,
            n_jobs=1,  # a seed makes UMAP single-threaded anyway
            n_neighbors=min(15, len(x) - 1),
        )
        return np.asarray(reducer.fit_transform(x), np.float32), None
    centered = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centered, full_matrices=False)
    variance = s**2
    explained = float(variance[:2].sum() / variance.sum()) if variance.sum() > 0 else 1.0
    xy = (centered @ vt[:2].T).astype(np.float32)
    if xy.shape[1] < 2:  # one point (or one dimension): the rest of the plane is 0
        xy = np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
    return xy, explained


def _png(
    figure: ModuleType, xy: np.ndarray, clusters: np.ndarray, title: str, projection: str
) -> bytes:
    # matplotlib's Figure, not pyplot: no global backend or figure state
    fig = figure.Figure(figsize=(10, 8), dpi=110)
    ax = fig.subplots()
    size = 2 if len(xy) > 5000 else 8
    ax.scatter(xy[:, 0], xy[:, 1], c=clusters, cmap="tab20", s=size, alpha=0.7, linewidths=0)
    for c in np.unique(clusters):
        cx, cy = np.median(xy[clusters == c], axis=0)
        ax.annotate(str(c), (cx, cy), fontsize=9, weight="bold", ha="center", va="center")
    ax.set_title(title)
    ax.set_xlabel(f"{projection.upper()} 1")
    ax.set_ylabel(f"{projection.upper()} 2")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _html(go: ModuleType, points: pa.Table, title: str, projection: str) -> str:
    """A self-contained page (plotly.js inlined: it opens offline), one trace per cluster."""
    ids = points.column(ID).to_pylist()
    texts = points.column("text").to_pylist() if "text" in points.column_names else None
    clusters = points.column(CLUSTER).to_numpy()
    x, y = points.column("x").to_numpy(), points.column("y").to_numpy()
    fig = go.Figure()
    for c in np.unique(clusters):
        rows = np.flatnonzero(clusters == c)
        hover = [_hover(ids[i], int(c), texts[i] if texts else None) for i in rows]
        fig.add_trace(
            go.Scattergl(
                x=x[rows],
                y=y[rows],
                mode="markers",
                name=f"cluster {c} ({len(rows)})",
                marker={"size": 4 if len(points) > 5000 else 7, "opacity": 0.75},
                hovertext=hover,
                hoverinfo="text",
            )
        )
    fig.update_layout(
        title=title, xaxis_title=f"{projection.upper()} 1", yaxis_title=f"{projection.upper()} 2",
        legend_title="cluster (points)", template="plotly_white", height=800,
    )  # fmt: skip
    return str(fig.to_html(include_plotlyjs=True, full_html=True))


def _hover(doc_id: str, cluster: int, text: str | None) -> str:
    from html import escape

    line = f"<b>{escape(doc_id)}</b> · cluster {cluster}"
    if text:
        snippet = text if len(text) <= HOVER_CHARS else text[:HOVER_CHARS] + "…"
        line += "<br>" + escape(snippet)
    return line
