"""Where a gateway replica's searches and query encoding run, for its placement.

Both placements hand the same `Searcher` an asynchronous encoder and shard search:
"gateway" (`LocalPlacement`) holds a `ShardedIndex`, the library's own, in the replica;
"grouped" and "per-shard" (`RemotePlacement`) call `ShardSearcher` and `Encoder`
replicas and merge their top-k.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from ray import serve
from ray.exceptions import RayActorError, RayError

from embedlib.index.faiss_ops import merge_topk
from embedlib.index.store.version import IndexVersion
from embedlib.models.encoders import encode_batches
from embedlib.search.deadline import check_deadline
from embedlib.search.lexical import LexicalTask, merge_lexical
from embedlib.search.searcher import AsyncPlacement, Searcher, Task
from embedlib.search.sharded_index import ShardedIndex, require_text_model
from embedlib.search.shards import SearchTask

INLINE_SEARCH_ROWS = 16  # smaller unfiltered searches run on the event loop, larger in a thread
INLINE_LEXICAL_ROWS = 200_000  # ... BM25 searches too, over indexes of at most this many rows
RETRIES = 3  # calls to a searcher replica that died mid-call
READY_CACHE_S = 1.0  # /readyz answers from the last fan-out this recent


class Placement(AsyncPlacement, Protocol):
    """A gateway replica's placement: the searcher's, and what the other routes ask of
    the query model and the shards."""

    searcher: Searcher

    async def count_tokens(self, texts: list[str]) -> int: ...

    async def ready(self) -> bool: ...


class LocalPlacement:
    """Placement "gateway": the shards and the query model live in this replica."""

    def __init__(self, index: ShardedIndex) -> None:
        self.index = index
        self.searcher = index.searcher
        self.ntotal = index.ntotal
        if index.manifest.text_model:
            index.query_model()  # load it now, not on the first request

    async def encode(self, texts: list[str]) -> np.ndarray:
        require_text_model(self.index.manifest)
        return await self._encode_batched(texts)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0)
    async def _encode_batched(self, batches: list[list[str]]) -> list[np.ndarray]:
        """The texts of requests that arrived while the model was busy, in one call, off
        the event loop (vector queries go on meanwhile); one call at a time."""
        return await asyncio.to_thread(encode_batches, self.index.query_model(), batches)

    async def encode_images(self, images: list[bytes]) -> np.ndarray:
        """Image queries' vectors, decoded and embedded off the event loop."""
        require_text_model(self.index.manifest)
        return await asyncio.to_thread(self.index.encode_images, images)

    async def count_tokens(self, texts: list[str]) -> int:
        """Tokens of `texts` (off the event loop: up to 2M characters to tokenize)."""
        model = self.index.query_model()
        return int((await asyncio.to_thread(model.token_lengths, texts)).sum())

    async def search(self, task: Task) -> tuple[np.ndarray, np.ndarray]:
        if self._inline(task):
            return self.index.shards.search_one(task)  # microseconds: no thread hop
        return await asyncio.to_thread(self.index.shards.search_one, task)

    async def search_all(self, tasks: Sequence[Task]) -> list[tuple[np.ndarray, np.ndarray]]:
        """A round's searches: on the event loop when they are few and small, else one
        after another in one thread, the deadline checked between them (a round of 1,000
        one-vector searches, queries of distinct nprobe, held the loop 2.8 s)."""
        if len(tasks) == 1:
            return [await self.search(tasks[0])]
        if len(tasks) <= INLINE_SEARCH_ROWS and all(self._inline(t) for t in tasks):
            return [self.index.shards.search_one(t) for t in tasks]
        return await asyncio.to_thread(self._search_each, tasks)

    def _search_each(self, tasks: Sequence[Task]) -> list[tuple[np.ndarray, np.ndarray]]:
        results = []
        for task in tasks:
            check_deadline()
            results.append(self.index.shards.search_one(task))
        return results

    async def ready(self) -> bool:
        return True

    def _inline(self, task: Task) -> bool:
        """Whether a search is small enough to run on the event loop."""
        if task.filter:
            return False
        if isinstance(task, SearchTask):
            return len(task.vectors) <= INLINE_SEARCH_ROWS
        # BM25 walks the postings of the query's terms: short over a small index
        return len(task.queries) <= INLINE_SEARCH_ROWS and self.ntotal <= INLINE_LEXICAL_ROWS


class RemotePlacement:
    """Placements "grouped" and "per-shard": shard searcher and encoder replicas."""

    def __init__(self, version: IndexVersion, searchers: list[Any], encoder: Any | None) -> None:
        self.searcher = Searcher.open(version)
        self.manifest = version.manifest
        self.searchers, self.encoder = searchers, encoder
        self._ready, self._ready_at = False, -READY_CACHE_S

    def _encoder(self) -> Any:
        require_text_model(self.manifest)
        return self.encoder

    async def encode(self, texts: list[str]) -> np.ndarray:
        return await self._encoder().encode.remote(texts)

    async def encode_images(self, images: list[bytes]) -> np.ndarray:
        vectors: np.ndarray = await self._encoder().encode_images.remote(images)
        return vectors

    async def count_tokens(self, texts: list[str]) -> int:
        return int(await self._encoder().count_tokens.remote(texts))

    async def search(self, task: Task) -> tuple[np.ndarray, np.ndarray]:
        parts = await asyncio.gather(*(_with_retry(s.search, task) for s in self.searchers))
        if isinstance(task, LexicalTask):
            return merge_lexical(parts, task.k)
        return merge_topk(parts, task.k, self.manifest.metric)

    async def search_all(self, tasks: Sequence[Task]) -> list[tuple[np.ndarray, np.ndarray]]:
        return list(await asyncio.gather(*(self.search(t) for t in tasks)))

    async def ready(self) -> bool:
        """Whether every searcher and the encoder answer a ping; the answer is kept for
        READY_CACHE_S, so probes that come often do not fan out each time. A dead
        replica (Ray raises its error) is "not ready", not an error."""
        now = time.monotonic()
        if now - self._ready_at < READY_CACHE_S:
            return self._ready
        calls = [s.ping.remote() for s in self.searchers]
        if self.encoder is not None:
            calls.append(self.encoder.ping.remote())
        try:
            await asyncio.wait_for(asyncio.gather(*calls), timeout=5)
            ready = True
        except (TimeoutError, RuntimeError, RayError):
            ready = False
        self._ready, self._ready_at = ready, time.monotonic()
        return ready


async def _with_retry(method: Any, *args: Any) -> Any:
    """Call a deployment; when the replica died mid-call, Serve routes the retry to a live one."""
    for attempt in range(RETRIES):
        try:
            return await method.remote(*args)
        except RayActorError:
            if attempt == RETRIES - 1:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")
