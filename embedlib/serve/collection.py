"""One named collection inside a gateway replica: its served version, the placement its
searches and query encoding run in, and what /v1/collections says of it."""

from __future__ import annotations

import posixpath
from typing import Any

import numpy as np

from embedlib.index.store.version import IndexVersion
from embedlib.models.encoders import QueryModels
from embedlib.models.fingerprint import is_image_model
from embedlib.search.query import Query, SearchOptions
from embedlib.search.searcher import Answers
from embedlib.search.sharded_index import ShardedIndex
from embedlib.serve.config import AppOptions, ServedVersion
from embedlib.serve.placement import LocalPlacement, Placement, RemotePlacement


class ServedCollection:
    """A collection at one version, searched through its placement ("gateway": the index
    in this replica, its query model shared with collections of the same fingerprint;
    else the collection's searcher and encoder deployments)."""

    def __init__(
        self,
        options: AppOptions,
        served: ServedVersion,
        searchers: list[Any],
        encoder: Any | None,
        models: QueryModels,
    ) -> None:
        self.name, self.version = served.name, served.version
        self.index = options.collection(served.name).index
        so = options.storage_options
        self.placement: Placement
        if options.placement == "gateway":
            index = ShardedIndex(served.version_url, storage_options=so, query_models=models)
            self.placement = LocalPlacement(index)
        else:
            opened = IndexVersion(served.version_url, storage_options=so)
            self.placement = RemotePlacement(opened, searchers, encoder)
        self.searcher = self.placement.searcher
        self.manifest = self.searcher.manifest
        self.metric = self.manifest.metric
        model = self.manifest.model.name if self.manifest.model else ""
        self.model_names = {n for n in (model, posixpath.basename(model)) if n}

    async def run(self, queries: list[Query]) -> Answers:
        """Answer queries through this collection's placement."""
        return await self.searcher.run_async(queries, self.placement)

    async def run_batch(self, vectors: np.ndarray, options: SearchOptions) -> Answers:
        """One search for many vectors sharing `options`, through the placement."""
        return await self.searcher.run_batch_async(vectors, options, self.placement)

    @property
    def modes(self) -> list[str]:
        """The search modes it answers."""
        return ["dense", *(["lexical", "hybrid"] if self.manifest.lexical else [])]

    @property
    def image_queries(self) -> bool:
        """Whether its model has an image tower: it embeds {"image": base64} queries."""
        m = self.manifest
        return bool(m.text_model and m.model and is_image_model(m.model.name))

    def info(self) -> dict[str, Any]:
        """What /v1/collections and /v1/indexes say of it."""
        m = self.manifest
        return {
            "name": self.name, "model": m.model.name if m.model else None,
            "text_model": m.text_model, "dim": m.dim, "metric": m.metric, "ntotal": m.ntotal,
            "shards": len(m.shards), "factory": m.factory,
            "compressed": m.plan.compressed,
            "store_vectors": m.vectors.dtype if m.vectors else None,
            "search_params": m.search_params.to_dict(), "recall_at_10": m.tuning.recall_at_10,
            "created_at": m.created_at, "version": self.version,
            "metadata_columns": sorted(self.searcher.docs.metadata_columns),
            "lexical": m.lexical.language if m.lexical else None, "modes": self.modes,
            "chunked": self.searcher.docs.chunked, "modality": m.modality,
            "image_queries": self.image_queries,
        }  # fmt: skip
