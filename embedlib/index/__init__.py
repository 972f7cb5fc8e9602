"""Sharded, versioned FAISS indexes: planning, building on Ray, reading."""

from embedlib.index.build import IndexOptions, IndexReport, build_index
from embedlib.index.plan import IndexPlan, plan_index
from embedlib.index.reader import Hit, ShardedIndex
from embedlib.index.update import UpdateReport, gc_versions, retrain_index, update_index

__all__ = [
    "Hit",
    "IndexOptions",
    "IndexPlan",
    "IndexReport",
    "ShardedIndex",
    "UpdateReport",
    "build_index",
    "gc_versions",
    "plan_index",
    "retrain_index",
    "update_index",
]
