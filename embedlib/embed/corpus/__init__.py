"""Reading a corpus: find its files, plan deterministic splits, read a split in batches."""

from embedlib.embed.corpus.discover import SourceFile, discover
from embedlib.embed.corpus.plan import Split, plan_splits
from embedlib.embed.corpus.read import QuarantineRecord, RawBatch, read_corpus, read_split

__all__ = [
    "QuarantineRecord",
    "RawBatch",
    "SourceFile",
    "Split",
    "discover",
    "plan_splits",
    "read_corpus",
    "read_split",
]
