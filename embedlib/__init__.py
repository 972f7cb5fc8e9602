"""embedlib: corpora to embeddings on Ray, sharded FAISS indexes, k-NN search over HTTP.

The public surface is what this module names; everything else is internal. The uses
that need an extra (`words`, `maps`, `recommend`, `train`) import its packages only when
called, and say which extra to install when one is missing.
"""

from embedlib._version import __version__
from embedlib.client import Client
from embedlib.clustering import ClusterReport, cluster_vectors
from embedlib.embed_job import EmbedReport, embed_corpus
from embedlib.embedding_set import EmbeddingSet, EmbeddingSetManifest, write_vector_set
from embedlib.exact import exact_search
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
from embedlib.finetune import FinetuneReport, finetune
from embedlib.index import (
    Hit,
    IndexManifest,
    IndexOptions,
    IndexReport,
    Query,
    SearchOptions,
    ShardedIndex,
    TextItem,
    UpdateReport,
    build_index,
    gc_versions,
    retrain_index,
    update_index,
)
from embedlib.maps import MapReport, draw_map
from embedlib.models import DEFAULT_MODEL, ModelFingerprint
from embedlib.options import EmbedOptions, RunOptions
from embedlib.recommend import Recommender, RecommenderReport, train_recommender
from embedlib.word2vec import Word2VecReport, train_word2vec
from embedlib.word_vectors import evaluate_analogies, import_word_vectors

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
