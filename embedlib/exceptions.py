"""Errors embedlib raises. Each message says what went wrong and what to do about it."""

from __future__ import annotations


class EmbedlibError(Exception):
    """Base class of every error embedlib raises on purpose."""


class MissingColumnError(EmbedlibError, KeyError):
    """A column the job needs is not in the input."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DuplicateIdError(EmbedlibError, ValueError):
    """The same document id occurs more than once in the input."""


class SourceError(EmbedlibError):
    """The input cannot be found, listed or read (a corrupt or unreadable file)."""


class IncompatibleOutputError(EmbedlibError):
    """The output location holds work made with a different model, options or source."""


class ModelMismatchError(EmbedlibError, ValueError):
    """Vectors from different models (or normalisations) would be mixed."""


class StorageError(EmbedlibError):
    """A storage location cannot be used the way the job needs (e.g. memory:// on Ray)."""


class IncompleteEmbeddingSetError(EmbedlibError):
    """An embedding set has no manifest yet: its job has not finished."""


class ModelConversionError(EmbedlibError):
    """The model cannot be run by the OpenVINO backend (and the reason why)."""


class MissingExtraError(EmbedlibError, ImportError):
    """An optional part of embedlib is used without the packages it needs installed."""


class VectorError(EmbedlibError, ValueError):
    """Vectors that cannot be indexed: NaN/inf, zero for cosine, wrong dimension."""


class IndexPlanError(EmbedlibError, ValueError):
    """A factory FAISS rejects, or an index that cannot fit the memory budget."""


class RecallError(EmbedlibError):
    """The target recall could not be reached and --strict-recall was given."""


class IndexLockedError(EmbedlibError):
    """Another writer holds the index's lock."""


class LockLostError(IndexLockedError):
    """This writer's lock was taken over (its heartbeat stalled): it must not publish."""


class QueryError(EmbedlibError, ValueError):
    """A query the index cannot answer (unknown id, wrong dimension, bad parameters)."""


class NoTextModelError(QueryError):
    """Text was given to an index built from vectors without a text model."""


class NoLexicalIndexError(QueryError):
    """A lexical or hybrid search of an index built without a lexical part."""


class FilterError(EmbedlibError, ValueError):
    """A filter on a column that does not exist, or of a shape we do not understand."""


class RecommendError(EmbedlibError, ValueError):
    """A recommendation request that cannot be answered as asked."""


class ClientError(EmbedlibError):
    """The server answered with an error status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class ApiError(Exception):
    """An HTTP error answer of the gateway: status, a short code and a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class SwitchError(EmbedlibError):
    """A served version could not be replaced by another (its replicas failed to start):
    the keeper deploys the version served before again."""


class DeadlineExceededError(EmbedlibError, TimeoutError):
    """A request's work ran past its deadline and was stopped (HTTP 504)."""
