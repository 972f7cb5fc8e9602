"""embedlib: corpora to embeddings on Ray, sharded FAISS indexes, k-NN search over HTTP.

The public surface is what this module names; everything else is internal. Names load
on first use (PEP 562), so `import embedlib` and `embedlib --help` import neither Ray,
FAISS nor torch. The uses that need an extra (`words`, `maps`, `recommend`, `train`)
import its packages only when called, and say which extra to install when one is missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedlib._version import __version__
from embedlib.exceptions import (
    ClientError,
    DuplicateIdError,
    EmbedlibError,
    FilterError,
    IncompatibleOutputError,
    IncompleteEmbeddingSetError,
    IndexLockedError,
    LockLostError,
    MissingColumnError,
    MissingExtraError,
    ModelConversionError,
    ModelMismatchError,
    NoLexicalIndexError,
    NoTextModelError,
    QueryError,
    RecommendError,
    SourceError,
    StorageError,
    VectorError,
)
from embedlib.extras import lazy_exports

if TYPE_CHECKING:
    from embedlib.client import Client
    from embedlib.embed.job import EmbedReport, embed_corpus
    from embedlib.index.build.driver import IndexOptions, IndexReport, build_index
    from embedlib.index.store.version import IndexManifest
    from embedlib.index.update.gc import gc_versions
    from embedlib.index.update.retrain import retrain_index
    from embedlib.index.update.upsert import UpdateReport, update_index
    from embedlib.models.fingerprint import DEFAULT_MODEL, ModelFingerprint
    from embedlib.options import EmbedOptions, RunOptions
    from embedlib.search.exact import exact_search
    from embedlib.search.query import Hit, Query, SearchOptions, TextItem
    from embedlib.search.sharded_index import ShardedIndex
    from embedlib.sets.embedding_set import EmbeddingSet, EmbeddingSetManifest, write_vector_set
    from embedlib.uses.clustering import ClusterReport, cluster_vectors
    from embedlib.uses.finetune import FinetuneReport, finetune
    from embedlib.uses.maps import MapReport, draw_map
    from embedlib.uses.recommend import Recommender, RecommenderReport, train_recommender
    from embedlib.uses.word2vec import Word2VecReport, train_word2vec
    from embedlib.uses.word_vectors import evaluate_analogies, import_word_vectors

# where each lazily loaded name lives
_LAZY: dict[str, str] = {
    "Client": "embedlib.client",
    "ClusterReport": "embedlib.uses.clustering",
    "cluster_vectors": "embedlib.uses.clustering",
    "EmbedReport": "embedlib.embed.job",
    "embed_corpus": "embedlib.embed.job",
    "EmbeddingSet": "embedlib.sets.embedding_set",
    "EmbeddingSetManifest": "embedlib.sets.embedding_set",
    "write_vector_set": "embedlib.sets.embedding_set",
    "exact_search": "embedlib.search.exact",
    "FinetuneReport": "embedlib.uses.finetune",
    "finetune": "embedlib.uses.finetune",
    "Hit": "embedlib.search.query",
    "Query": "embedlib.search.query",
    "SearchOptions": "embedlib.search.query",
    "TextItem": "embedlib.search.query",
    "IndexManifest": "embedlib.index.store.version",
    "IndexOptions": "embedlib.index.build.driver",
    "IndexReport": "embedlib.index.build.driver",
    "build_index": "embedlib.index.build.driver",
    "ShardedIndex": "embedlib.search.sharded_index",
    "UpdateReport": "embedlib.index.update.upsert",
    "gc_versions": "embedlib.index.update.gc",
    "retrain_index": "embedlib.index.update.retrain",
    "update_index": "embedlib.index.update.upsert",
    "MapReport": "embedlib.uses.maps",
    "draw_map": "embedlib.uses.maps",
    "DEFAULT_MODEL": "embedlib.models.fingerprint",
    "ModelFingerprint": "embedlib.models.fingerprint",
    "EmbedOptions": "embedlib.options",
    "RunOptions": "embedlib.options",
    "Recommender": "embedlib.uses.recommend",
    "RecommenderReport": "embedlib.uses.recommend",
    "train_recommender": "embedlib.uses.recommend",
    "Word2VecReport": "embedlib.uses.word2vec",
    "train_word2vec": "embedlib.uses.word2vec",
    "evaluate_analogies": "embedlib.uses.word_vectors",
    "import_word_vectors": "embedlib.uses.word_vectors",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "DEFAULT_MODEL",
    "Client",
    "ClientError",
    "ClusterReport",
    "DuplicateIdError",
    "EmbedOptions",
    "EmbedReport",
    "EmbeddingSet",
    "EmbeddingSetManifest",
    "EmbedlibError",
    "FilterError",
    "FinetuneReport",
    "Hit",
    "IncompatibleOutputError",
    "IncompleteEmbeddingSetError",
    "IndexLockedError",
    "IndexManifest",
    "IndexOptions",
    "IndexReport",
    "LockLostError",
    "MapReport",
    "MissingColumnError",
    "MissingExtraError",
    "ModelConversionError",
    "ModelFingerprint",
    "ModelMismatchError",
    "NoLexicalIndexError",
    "NoTextModelError",
    "Query",
    "QueryError",
    "RecommendError",
    "Recommender",
    "RecommenderReport",
    "RunOptions",
    "SearchOptions",
    "ShardedIndex",
    "SourceError",
    "StorageError",
    "TextItem",
    "UpdateReport",
    "VectorError",
    "Word2VecReport",
    "__version__",
    "build_index",
    "cluster_vectors",
    "draw_map",
    "embed_corpus",
    "evaluate_analogies",
    "exact_search",
    "finetune",
    "gc_versions",
    "import_word_vectors",
    "retrain_index",
    "train_recommender",
    "train_word2vec",
    "update_index",
    "write_vector_set",
]
