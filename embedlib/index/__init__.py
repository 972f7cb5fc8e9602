"""Sharded, versioned FAISS indexes: planning, building on Ray, reading, searching,
updating."""

from embedlib.index.build import IndexOptions, IndexReport, build_index
from embedlib.index.plan import IndexPlan, plan_index
from embedlib.index.query import Hit, Query, SearchOptions, TextItem
from embedlib.index.reader import ShardedIndex
from embedlib.index.searcher import Searcher
from embedlib.index.update import UpdateReport, gc_versions, retrain_index, update_index
from embedlib.index.version import IndexManifest, IndexVersion, SearchParams

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
