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
