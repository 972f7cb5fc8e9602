"""The embed job's commit protocol: an attempt file moved to its final name, then the
split's commit record (a split is committed iff its record exists), and the manifest
written last, from the records."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import fsspec

from embedlib.embed.chunking import chunking_record
from embedlib.embed.corpus.discover import SourceFile
from embedlib.embed.corpus.plan import Split
from embedlib.embed.record import JobRecord
from embedlib.embed.split import SplitResult
from embedlib.models.fingerprint import ModelFingerprint
from embedlib.options import EmbedOptions
from embedlib.sets.embedding_set import (
    COMMITS,
    QUARANTINE,
    EmbeddingSetManifest,
    PartEntry,
    join,
)
from embedlib.storage import read_json, write_json_atomic


def committed_splits(fs: fsspec.AbstractFileSystem, path: str) -> dict[int, dict[str, Any]]:
    folder = join(path, COMMITS)
    if not fs.exists(folder):
        return {}
    records = {}
    for entry in fs.ls(folder, detail=False):
        name = entry.rsplit("/", 1)[-1]
        if name.startswith("part-") and name.endswith(".json"):
            record = read_json(fs, entry)
            records[int(record["index"])] = record
    return records


def commit_split(
    fs: fsspec.AbstractFileSystem, path: str, split: Split, result: SplitResult
) -> dict[str, Any]:
    """Move the attempt into place, then write the commit record: the split counts as
    committed only once its record exists, so a crash in between just redoes it."""
    final = None
    if result.attempt is not None and result.file is not None:
        final = f"{split.name}.parquet"
        fs.mv(result.attempt, join(path, final))
    if result.quarantine is not None:
        fs.makedirs(join(path, QUARANTINE), exist_ok=True)
        fs.mv(result.quarantine, join(path, QUARANTINE, f"{split.name}.jsonl"))
    record = {
        "index": split.index,
        "file": final,
        "rows": result.file.rows if result.file else 0,  # rows of the part file (chunks)
        "bytes": result.file.bytes if result.file else 0,
        "sha256": result.file.sha256 if result.file else None,
        "source": split.to_dict(),
        "rows_read": result.rows_read,
        "documents": result.documents,
        "chunks": result.chunks,
        "tokens": result.tokens,
        "skipped": dict(result.skipped),
        "quarantined": result.quarantined,
        "truncated": result.truncated,
        "seconds": round(result.seconds, 3),
        "node": result.node,
    }
    fs.makedirs(join(path, COMMITS), exist_ok=True)
    write_json_atomic(fs, join(path, COMMITS, f"{split.name}.json"), record)
    return record


def write_manifest(
    fs: fsspec.AbstractFileSystem,
    path: str,
    source: str,
    files: list[SourceFile],
    splits: list[Split],
    committed: Mapping[int, Mapping[str, Any]],
    job: JobRecord,
    options: EmbedOptions,
    fingerprint: ModelFingerprint,
) -> EmbeddingSetManifest:
    records = [committed[s.index] for s in splits]
    skipped: Counter[str] = Counter()
    for r in records:
        skipped.update(r["skipped"])
    manifest = EmbeddingSetManifest(
        model=fingerprint,
        metric=options.metric,
        dtype=options.dtype,
        text_column=options.text_column if _keeps_text(options) else None,
        id_column=job.id_column,
        modality="image" if options.image_column is not None else "text",
        hash={
            "column": "text_hash",
            "algorithm": "blake2b-128",
            "of": "the image file" if options.image_column is not None else "the embedded text",
        },
        source={
            "url": source,
            "plan_digest": job.plan_digest,
            "files": [{"path": f.relpath, "format": f.format, "bytes": f.size} for f in files],
        },
        options=options.to_dict(),
        chunking=chunking_record(options),
        counts={
            "documents": sum(r["documents"] for r in records),
            "rows_read": sum(r["rows_read"] for r in records),
            "skipped": dict(skipped),
            "quarantined": sum(r["quarantined"] for r in records),
            "truncated": sum(r["truncated"] for r in records),
            "chunks": sum(r.get("chunks", r["documents"]) for r in records),
        },
        parts=tuple(PartEntry.from_dict(r) for r in records),
    )
    manifest.write(fs, path)
    return manifest


def _keeps_text(options: EmbedOptions) -> bool:
    if options.image_column is not None:
        return False  # the documents are images: no text column to search
    return options.columns is None or options.text_column in options.columns
