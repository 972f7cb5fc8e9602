"""Writing an index version's lexical part: one task per serving shard analyzes its docs
table's text and writes its postings; the driver adds up the shards' counts into the
corpus-wide statistics. The index build runs it on every shard, an update on the
shards it rewrote (the others' counts are read back from their postings)."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import replace

import fsspec

from embedlib.distributed import map_tasks
from embedlib.index.store.version import ShardEntry
from embedlib.options import RunOptions
from embedlib.search.lexical import (
    LEXICAL_STATS,
    LexicalInfo,
    TermCounts,
    lexical_file,
    read_shard_counts,
    write_shard_postings,
    write_stats,
)
from embedlib.storage import file_sha256


def shard_postings(
    fs: fsspec.AbstractFileSystem, path: str, entry: ShardEntry, text_column: str, language: str
) -> tuple[ShardEntry, TermCounts]:
    """Task: the postings of one shard of the version at `path`, and its entry naming them."""
    name = lexical_file(entry.shard)
    target = posixpath.join(path, name)
    counts = write_shard_postings(
        fs, posixpath.join(path, entry.docs), target, text_column, language
    )
    return replace(entry, lexical=name, lexical_sha256=file_sha256(fs, target)), counts


def write_lexical(
    fs: fsspec.AbstractFileSystem,
    path: str,
    shards: Sequence[ShardEntry],
    text_column: str,
    language: str,
    run: RunOptions,
    *,
    rewrite: Sequence[bool] | None = None,
) -> tuple[list[ShardEntry], LexicalInfo]:
    """Postings for the shards of the version being written at `path` (those flagged in
    `rewrite`; all when None: the others' files are already there) and the statistics."""
    todo = [n for n, _ in enumerate(shards) if rewrite is None or rewrite[n]]
    done = map_tasks(
        shard_postings,
        [(fs, path, shards[n], text_column, language) for n in todo],
        run,
        desc="lexical",
    )
    entries = list(shards)
    counts: list[TermCounts | None] = [None] * len(shards)
    for n, (entry, c) in zip(todo, done, strict=True):
        entries[n], counts[n] = entry, c
    for n, entry in enumerate(entries):
        if counts[n] is None:
            counts[n] = read_shard_counts(fs, posixpath.join(path, entry.lexical or ""))
    total = TermCounts.merge([c for c in counts if c is not None])
    stats = posixpath.join(path, LEXICAL_STATS)
    write_stats(fs, stats, total)
    info = LexicalInfo(
        language=language,
        documents=total.documents,
        tokens=total.tokens,
        stats_sha256=file_sha256(fs, stats),
    )
    return entries, info
