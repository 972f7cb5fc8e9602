"""The vector files (float32 / float16 / int8 with calibrated ranges) and exact
rescoring of compressed candidates."""

from __future__ import annotations

import faiss
import fsspec
import numpy as np
import pytest

from embedlib.index.store.vectors import (
    VectorCodec,
    VectorFile,
    concat_vector_files,
    filter_vector_file,
    read_vector_positions,
    read_vector_rows,
    write_vector_file,
)
from embedlib.search.rescore import rescore


def _unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("dtype", "tolerance"), [("float32", 0), ("float16", 1e-3), ("int8", 0.01)]
)
def test_a_vector_file_reads_back_what_was_written(tmp_path, dtype, tolerance):
    x = _unit_rows(1000, 32)
    codec = VectorCodec.calibrate(dtype, x[:500])
    fs = fsspec.filesystem("file")
    write_vector_file(fs, str(tmp_path / "a.npy"), x[:600], codec)
    write_vector_file(fs, str(tmp_path / "b.npy"), x[600:], codec)
    assert concat_vector_files(fs, [str(tmp_path / "a.npy"), str(tmp_path / "b.npy")],
                               str(tmp_path / "all.npy"), codec) == 1000  # fmt: skip
    stored = np.load(tmp_path / "all.npy")  # a plain .npy: any tool reads it
    assert stored.dtype == np.dtype(dtype) and stored.shape == (1000, 32)
    file = VectorFile(str(tmp_path / "all.npy"), codec)
    picks = np.array([999, 3, 4, 5, 600, 0])
    for got in (
        file.get(picks),
        read_vector_positions(fs, str(tmp_path / "all.npy"), codec, picks),
        read_vector_rows(fs, str(tmp_path / "all.npy"), codec, 0, 1000)[picks],
    ):
        assert got.dtype == np.float32
        assert np.abs(got - x[picks]).max() <= tolerance
    if dtype == "int8":  # dequantized: close, not equal; rows outside the sample's range clip
        assert codec.to_dict()["dtype"] == "int8" and len(codec.low or ()) == 32
        assert VectorCodec.from_dict(codec.to_dict()) == codec
    with pytest.raises(IndexError, match="outside the vector file"):
        file.get(np.array([1000]))


def test_filtering_a_vector_file_keeps_rows_in_order_and_appends(tmp_path):
    x = _unit_rows(300, 8)
    codec = VectorCodec.calibrate("int8", x)
    fs = fsspec.filesystem("file")
    write_vector_file(fs, str(tmp_path / "v.npy"), x[:200], codec)
    keep = np.arange(200) % 3 != 0
    filter_vector_file(fs, str(tmp_path / "v.npy"), str(tmp_path / "w.npy"), codec, keep, x[200:])
    got = VectorFile(str(tmp_path / "w.npy"), codec).get(np.arange(int(keep.sum()) + 100))
    want = np.concatenate([x[:200][keep], x[200:]])
    assert np.abs(got - want).max() < 0.01


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_rescoring_orders_candidates_by_their_exact_score(metric):
    """The candidates of a lossy index (4-byte PQ), rescored exactly, rank as exact search
    ranks them; missing candidates (-1) sort last with a NaN score, as FAISS pads."""
    x = _unit_rows(2000, 16, seed=1)
    q = _unit_rows(5, 16, seed=2)
    faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    exact_d, exact_i = faiss.knn(q, x, 10, metric=faiss_metric)
    candidates = np.concatenate([exact_i[:, ::-1], np.full((5, 3), -1)], axis=1)  # reversed, padded
    d, i = rescore(q, candidates, lambda ids: x[ids], 12, metric)
    assert (i[:, :10] == exact_i).all() and (i[:, 10:] == -1).all()
    np.testing.assert_allclose(d[:, :10], exact_d, rtol=1e-5, atol=1e-5)
    assert np.isnan(d[:, 10:]).all()


@pytest.mark.parametrize("binary", [False, True])
def test_an_index_written_to_a_full_disk_raises(tmp_path, binary):
    """A small index (it fits FAISS's write buffer) written where the disk is full:
    FAISS's own writer printed "close error" and returned, leaving a truncated shard
    behind a build that reported success; ours raises. Written where there is room
    (locally, or uploaded to a store, whose size is checked), it reads back whole."""
    import os

    from embedlib.index.binary import BinaryIndex
    from embedlib.index.faiss_ops import read_index_file, write_index

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    if binary:
        index = BinaryIndex(faiss.IndexBinaryFlat(64))
        index.index.add(np.random.default_rng(0).integers(0, 256, (10, 8), dtype=np.uint8))
    else:
        index = faiss.IndexFlatIP(8)
        index.add(_unit_rows(10, 8))
    fs = fsspec.filesystem("file")
    with pytest.raises(OSError, match="No space left"):
        write_index(index, fs, "/dev/full")
    write_index(index, fs, str(tmp_path / "shard.faiss"))
    assert read_index_file(fs, str(tmp_path / "shard.faiss")).ntotal == 10
    remote = fsspec.filesystem("memory")  # an object store: uploaded, its size checked
    write_index(index, remote, f"/full-disk-{binary}/shard.faiss")
    assert read_index_file(remote, f"/full-disk-{binary}/shard.faiss").ntotal == 10
