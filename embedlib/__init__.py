"""embedlib: corpora to embeddings on Ray, sharded FAISS indexes, k-NN search over HTTP.

The public surface is what this module names; everything else is internal.
"""

__version__ = "0.1.0"

from embedlib.client import Client, ClientError
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
from embedlib.models import DEFAULT_MODEL, ModelFingerprint
from embedlib.options import EmbedOptions, RunOptions
from embedlib.store import EmbeddingSet

__all__ = [
    "DEFAULT_MODEL",
    "Client",
    "ClientError",
    "DuplicateIdError",
    "EmbedOptions",
    "EmbedReport",
    "EmbeddingSet",
    "EmbedlibError",
    "IncompatibleOutputError",
    "IncompleteEmbeddingSetError",
    "MissingColumnError",
    "ModelConversionError",
    "ModelFingerprint",
    "ModelMismatchError",
    "RunOptions",
    "SourceError",
    "StorageError",
    "__version__",
    "embed_corpus",
    "exact_search",
]
