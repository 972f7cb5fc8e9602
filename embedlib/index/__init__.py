"""Sharded, versioned FAISS indexes: `store/` (a version's files, the CURRENT pointer,
the writers' lock, the docs tables), `build/` (planning and building on Ray) and
`update/` (upserts and deletes, drift, retraining, gc). Searching them is `search/`;
`ShardedIndex` is re-exported here, where users have always found it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedlib.extras import lazy_exports

if TYPE_CHECKING:
    from embedlib.index.build.driver import IndexOptions, IndexReport, build_index
    from embedlib.index.build.plan import IndexPlan, plan_index
    from embedlib.index.store.version import IndexManifest, IndexVersion, SearchParams
    from embedlib.index.update.gc import gc_versions
    from embedlib.index.update.retrain import retrain_index
    from embedlib.index.update.upsert import UpdateReport, update_index
    from embedlib.search.query import Hit, Query, SearchOptions, TextItem
    from embedlib.search.searcher import Searcher
    from embedlib.search.sharded_index import ShardedIndex

_LAZY = {
    "IndexOptions": "embedlib.index.build.driver",
    "IndexReport": "embedlib.index.build.driver",
    "build_index": "embedlib.index.build.driver",
    "IndexPlan": "embedlib.index.build.plan",
    "plan_index": "embedlib.index.build.plan",
    "IndexManifest": "embedlib.index.store.version",
    "IndexVersion": "embedlib.index.store.version",
    "SearchParams": "embedlib.index.store.version",
    "UpdateReport": "embedlib.index.update.upsert",
    "gc_versions": "embedlib.index.update.gc",
    "retrain_index": "embedlib.index.update.retrain",
    "update_index": "embedlib.index.update.upsert",
    "Hit": "embedlib.search.query",
    "Query": "embedlib.search.query",
    "SearchOptions": "embedlib.search.query",
    "TextItem": "embedlib.search.query",
    "Searcher": "embedlib.search.searcher",
    "ShardedIndex": "embedlib.search.sharded_index",
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
__all__ = [
    "Hit",
    "IndexManifest",
    "IndexOptions",
    "IndexPlan",
    "IndexReport",
    "IndexVersion",
    "Query",
    "SearchOptions",
    "SearchParams",
    "Searcher",
    "ShardedIndex",
    "TextItem",
    "UpdateReport",
    "build_index",
    "gc_versions",
    "plan_index",
    "retrain_index",
    "update_index",
]
