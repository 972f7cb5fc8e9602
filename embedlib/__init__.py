"""embedlib: corpora to embeddings on Ray, sharded FAISS indexes, k-NN search over HTTP.

The public surface is what this module names; everything else is internal.
"""

__version__ = "0.1.0"

from embedlib.client import Client, ClientError
from embedlib.clustering import ClusterReport, cluster_vectors
from embedlib.embed_job import EmbedReport, embed_corpus
from embedlib.exact import exact_search
from embedlib.exceptions import (
    DuplicateIdError,
    EmbedlibError,
    IncompatibleOutputError,
    IncompleteEmbeddingSetError,
    MissingColumnError,
    ModelConversionError,
    ModelMismatchError,
    SourceError,
    StorageError,
)
from embedlib.finetune import FinetuneReport, finetune
from embedlib.maps import MapReport, draw_map
from embedlib.models import DEFAULT_MODEL, ModelFingerprint
from embedlib.options import EmbedOptions, RunOptions
from embedlib.recommend import Recommender, RecommenderReport, train_recommender
from embedlib.store import EmbeddingSet
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
    "EmbedlibError",
    "FinetuneReport",
    "IncompatibleOutputError",
    "IncompleteEmbeddingSetError",
    "MapReport",
    "MissingColumnError",
    "ModelConversionError",
    "ModelFingerprint",
    "ModelMismatchError",
    "Recommender",
    "RecommenderReport",
    "RunOptions",
    "SourceError",
    "StorageError",
    "Word2VecReport",
    "__version__",
    "cluster_vectors",
    "draw_map",
    "embed_corpus",
    "evaluate_analogies",
    "exact_search",
    "finetune",
    "import_word_vectors",
    "train_recommender",
    "train_word2vec",
]
