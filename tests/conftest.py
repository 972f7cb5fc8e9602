"""Shared fixtures: one Ray instance and one loaded model per test session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import fsspec
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A local Ray instance sized for a 2-core machine, shared by every Ray test."""
    import ray

    ray.init(
        num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def encoder():
    """The default model, loaded once."""
    from embedlib.encode import TextEncoder

    return TextEncoder("default")


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
