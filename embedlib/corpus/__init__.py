"""Reading a corpus: find its files, plan deterministic shards, read a shard in batches."""

from embedlib.corpus.discover import SourceFile, discover
from embedlib.corpus.plan import Shard, plan_shards
from embedlib.corpus.read import QuarantineRecord, RawBatch, read_corpus, read_shard

__all__ = [
    "QuarantineRecord",
    "RawBatch",
    "Shard",
    "SourceFile",
    "discover",
    "plan_shards",
    "read_corpus",
    "read_shard",
]
