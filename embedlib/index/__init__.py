"""Sharded, versioned FAISS indexes: planning, building on Ray, reading."""

from embedlib.index.build import IndexOptions, IndexReport, build_index
from embedlib.index.plan import IndexPlan, plan_index
from embedlib.index.reader import Hit, ShardedIndex

__all__ = [
    "Hit",
    "IndexOptions",
    "IndexPlan",
    "IndexReport",
    "ShardedIndex",
    "build_index",
    "plan_index",
]
