"""K-means over an embedding set (Ray assignment vs one process, vs FAISS directly) and
the 2-D maps drawn from it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedlib import EmbeddingSet, RunOptions
from embedlib.cli import main
from embedlib.exceptions import EmbedlibError
from embedlib.index.faiss_ops import prepare_vectors
from embedlib.sets.sources import open_source
from embedlib.uses.clustering import CLUSTER, SUMMARY, assign, cluster_vectors, train_centroids
from embedlib.uses.maps import draw_map

LOCAL = RunOptions(runner="local", progress=False)
RAY = RunOptions(progress=False)


@pytest.fixture(scope="module")
def glove20k(tmp_path_factory, glove) -> Path:
    """The first 20k GloVe words as Parquet of id + vector, in two files (two parts)."""
    path, _, _ = glove
    table = pq.read_table(path).slice(0, 20_000)
    root = tmp_path_factory.mktemp("g20k") / "vectors"
    root.mkdir()
    pq.write_table(table.slice(0, 12_000), root / "a.parquet")
    pq.write_table(table.slice(12_000), root / "b.parquet")
    return root


def _digest(folder: Path) -> str:
    return hashlib.sha256(
        b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())
    ).hexdigest()


def test_ray_clustering_equals_one_process_and_faiss_directly(glove20k, tmp_path, ray_cluster):
    before = _digest(glove20k)
    ray_report = cluster_vectors(str(glove20k), str(tmp_path / "ray"), k=16, sample=8000, run=RAY)
    local_report = cluster_vectors(
        str(glove20k), str(tmp_path / "one"), k=16, sample=8000, run=LOCAL
    )
    assert _digest(glove20k) == before  # the input stays untouched
    a = EmbeddingSet(str(tmp_path / "ray")).read_table()
    b = EmbeddingSet(str(tmp_path / "one")).read_table()
    assert a.column("id").to_pylist() == b.column("id").to_pylist()
    assert a.column(CLUSTER).to_pylist() == b.column(CLUSTER).to_pylist()

    def shape(report):  # distances agree to float32 rounding (BLAS threads differ)
        return [(c.cluster, c.size, [h["id"] for h in c.nearest]) for c in report.clusters]

    assert shape(ray_report) == shape(local_report)
    assert np.allclose(
        [h["distance"] for c in ray_report.clusters for h in c.nearest],
        [h["distance"] for c in local_report.clusters for h in c.nearest],
        atol=1e-5,
    )
    # the twin: centroids trained on the same sample, every vector labelled by FAISS at once
    src = open_source(str(glove20k))
    centroids, trained_on = train_centroids(src, 16, metric="cosine", sample=8000, run=LOCAL)
    ids = a.column("id").to_pylist()
    x = prepare_vectors(np.stack(a.column("vector").to_numpy(zero_copy_only=False)), "cosine", ids)
    labels, distance = assign(x, centroids, "cosine")
    assert trained_on == 8000 and labels.tolist() == a.column(CLUSTER).to_pylist()
    sizes = np.bincount(labels, minlength=16)
    assert [c.size for c in ray_report.clusters] == sizes.tolist() and sizes.sum() == 20_000
    for c in ray_report.clusters:  # the summary lists the members nearest the centroid
        members = np.flatnonzero(labels == c.cluster)
        nearest = members[np.argsort(distance[members], kind="stable")[:5]]
        assert [h["id"] for h in c.nearest] == [ids[i] for i in nearest]
    assert (tmp_path / "ray" / SUMMARY).is_file()


def test_map_draws_png_and_html_and_clusters_an_unclustered_input(glove20k, tmp_path, ray_cluster):
    report = draw_map(str(glove20k), str(tmp_path / "map"), k=8, max_points=5000, run=RAY)
    png = (tmp_path / "map" / "map.png").read_bytes()
    html = (tmp_path / "map" / "map.html").read_text()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    points = pq.read_table(tmp_path / "map" / "points.parquet")
    word, cluster = points.column("id")[0].as_py(), points.column(CLUSTER)[0].as_py()
    assert "Plotly.newPlot" in html and "cluster 7 (" in html  # a legend entry per cluster
    assert f"\\u003cb\\u003e{word}\\u003c\\u002fb\\u003e · cluster {cluster}" in html  # hover
    assert points.num_rows == report.points == 5000 and report.clusters == 8
    clustered = EmbeddingSet(report.clustered_set)  # written beside the map
    assert len(clustered) == 20_000 and CLUSTER in clustered.read_table().column_names
    assert 0 < report.explained_variance < 1
    # a clustered set keeps its clusters: the map colours by them, --k is refused
    again = draw_map(report.clustered_set, str(tmp_path / "map2"), max_points=1000, run=RAY)
    assert again.clustered_set is None and again.clusters == 8
    with pytest.raises(EmbedlibError, match="already has a 'cluster' column"):
        draw_map(report.clustered_set, str(tmp_path / "map3"), k=4, run=RAY)


@pytest.mark.slow  # UMAP (numba) takes its time
def test_map_with_text_hover_and_umap(tmp_path, ray_cluster):
    """A small embedded-like set with a text column: the hover shows the document; UMAP."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16))
    vectors = np.concatenate([c + 0.05 * rng.normal(size=(100, 16)) for c in centers]).astype(
        np.float32
    )
    texts = [f"document {n} about topic {n // 100}" for n in range(300)]
    table = pa.table({
        "id": [str(n) for n in range(300)],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 16),
        CLUSTER: pa.array(np.repeat(np.arange(3), 100).astype(np.int32)),
        "text": texts,
    })  # fmt: skip
    (tmp_path / "set").mkdir()
    pq.write_table(table, tmp_path / "set" / "part.parquet")
    argv = [
        "map",
        str(tmp_path / "set"),
        str(tmp_path / "umap"),
        "--projection",
        "umap",
        "--no-progress",
    ]
    assert main(argv) == 0
    html = (tmp_path / "umap" / "map.html").read_text()
    assert "document 17 about topic 0" in html
    xy = pq.read_table(tmp_path / "umap" / "points.parquet")
    x, y, c = (xy.column(n).to_numpy() for n in ("x", "y", CLUSTER))
    centroids = np.array([[x[c == k].mean(), y[c == k].mean()] for k in range(3)])
    spread = max(
        np.hypot(x[c == k] - centroids[k, 0], y[c == k] - centroids[k, 1]).mean() for k in range(3)
    )
    gaps = min(np.hypot(*(centroids[i] - centroids[j])) for i in range(3) for j in range(i + 1, 3))
    assert gaps > 2 * spread  # three well-separated blobs stay apart in 2-D


def test_bad_k_is_refused(glove20k, tmp_path):
    with pytest.raises(EmbedlibError, match="between 1 and the number of vectors"):
        cluster_vectors(str(glove20k), str(tmp_path / "x"), k=30_000, run=LOCAL)
    with pytest.raises(EmbedlibError, match="between 1 and the number of vectors"):
        cluster_vectors(str(glove20k), str(tmp_path / "x"), k=0, run=LOCAL)


def test_a_map_of_one_document_draws_one_point(tmp_path):
    """One document: clustered into one cluster, drawn at the origin (PCA); UMAP, which
    needs a few points, is refused naming --projection pca."""
    table = pa.table({"id": ["only"], "vector": pa.FixedSizeListArray.from_arrays(
        pa.array(np.arange(1, 17, dtype=np.float32)), 16)})  # fmt: skip
    (tmp_path / "set").mkdir()
    pq.write_table(table, tmp_path / "set" / "part.parquet")
    report = draw_map(str(tmp_path / "set"), str(tmp_path / "map"), run=LOCAL)
    points = pq.read_table(tmp_path / "map" / "points.parquet").to_pylist()
    assert report.points == 1 and points == [{"id": "only", "x": 0.0, "y": 0.0, CLUSTER: 0}]
    assert (tmp_path / "map" / "map.png").stat().st_size > 0
    with pytest.raises(EmbedlibError, match="--projection pca"):
        draw_map(str(tmp_path / "set"), str(tmp_path / "umap"), projection="umap", run=LOCAL)
