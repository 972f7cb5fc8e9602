"""The Serve deployments behind a gateway in the "grouped" and "per-shard" placements.

A `ShardSearcher` replica holds a `ShardSet` over some shards of a version and gathers
concurrent requests by `@serve.batch` into one FAISS search per shard. The `Encoder`
embeds query text with the index's own model, refusing to start when its fingerprint
differs from the index's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray import serve

from embedlib.index.store.version import IndexVersion
from embedlib.models.encoders import encode_batches, encode_image_files, query_encoder
from embedlib.models.fingerprint import ModelFingerprint
from embedlib.search.searcher import Task
from embedlib.search.shards import ShardSet


class ShardSearcher:
    """Some shards of an index version; concurrent requests are searched together."""

    def __init__(
        self, version_url: str, shards: list[int], storage_options: dict[str, Any]
    ) -> None:
        version = IndexVersion(version_url, storage_options=storage_options)
        self.shard_set = ShardSet.open(version, shards)

    def ping(self) -> int:
        return len(self.shard_set.shards)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def search(self, tasks: list[Task]) -> list[tuple[np.ndarray, np.ndarray]]:
        return self.shard_set.search(tasks)


class Encoder:
    """Embeds query text with the index's own model."""

    def __init__(self, fingerprint: ModelFingerprint) -> None:
        self.encoder = query_encoder(fingerprint)

    def ping(self) -> int:
        return int(self.encoder.dim)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def encode(self, batches: list[list[str]]) -> list[np.ndarray]:
        """One model call for all concurrent requests' texts."""
        return encode_batches(self.encoder, batches)

    def count_tokens(self, texts: list[str]) -> int:
        return int(self.encoder.token_lengths(texts).sum())

    def encode_images(self, images: list[bytes]) -> np.ndarray:
        """Query vectors for image files, from a CLIP-style model's image tower."""
        return encode_image_files(self.encoder, images)
