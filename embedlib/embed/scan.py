"""The embed job's checks before any encoding: every split scanned once (columns, counts,
id hashes), the id and text columns resolved, duplicate ids found (or the first of each
kept). The scan is saved in the job record so that a resume does not scan again."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping

import fsspec
import numpy as np
from tqdm.auto import tqdm

from embedlib.embed.corpus.discover import SourceFile
from embedlib.embed.corpus.plan import Split
from embedlib.embed.documents import CHUNK_COLUMNS, RESERVED_COLUMNS, DocumentSpec, id_hashes
from embedlib.embed.pool import Runner
from embedlib.embed.record import JobRecord
from embedlib.embed.split import SplitContext, SplitScan, iter_documents
from embedlib.exceptions import DuplicateIdError, MissingColumnError
from embedlib.options import EmbedOptions, RunOptions
from embedlib.sets.embedding_set import (
    FORMAT_NAME,
)

_DUPLICATES_SHOWN = 5


def scan_and_validate(
    runner: Runner,
    fs_in: fsspec.AbstractFileSystem,
    fs_out: fsspec.AbstractFileSystem,
    out_path: str,
    splits: list[Split],
    files: list[SourceFile],
    options: EmbedOptions,
    run: RunOptions,
) -> JobRecord:
    """Read every split once: check columns and ids before any encoding starts; the job's
    record of what it found (the caller adds the plan and options)."""
    explicit_id = options.id_column
    spec = DocumentSpec(
        text_column=options.text_column,
        id_column=explicit_id or "id",
        columns=options.columns,
        generate_missing_ids=explicit_id is None,
        image_column=options.image_column,
        thumbnails=False,  # the scan decodes images to find the bad ones; it writes nothing
    )
    ctx = SplitContext(fs_in, fs_out, out_path, spec, run.read_batch_rows, options.dtype)
    scans: dict[int, SplitScan] = {}
    with tqdm(total=len(splits), unit="split", desc="scanning", disable=not run.progress) as bar:
        for scan in runner.scan(splits, ctx):
            scans[scan.index] = scan
            bar.update(1)
    columns_by_file: dict[str, dict[str, None]] = defaultdict(dict)
    for s in splits:
        columns_by_file[s.file.relpath].update(dict.fromkeys(scans[s.index].columns))
    id_column = resolve_columns(columns_by_file, files, options)
    drop = find_duplicates(fs_in, splits, scans, spec, options, run)
    return JobRecord(
        format=FORMAT_NAME,
        id_column=id_column,
        documents_per_split=[scans[s.index].documents for s in splits],
        rows_per_split=[scans[s.index].rows_read for s in splits],
        drop_rows=drop,
    )


def resolve_columns(
    columns_by_file: Mapping[str, Mapping[str, None]],
    files: list[SourceFile],
    options: EmbedOptions,
) -> str | None:
    """Check the named columns exist in every file; return the id column to use."""
    for f in files:
        cols = list(columns_by_file.get(f.relpath, {}))
        if not cols:
            continue  # an empty file
        shown = ", ".join(repr(c) for c in cols)
        if options.image_column is not None:
            if options.image_column not in cols:
                raise MissingColumnError(
                    f"image column {options.image_column!r} not found in {f.relpath!r}; its "
                    f"columns are {shown}. Name the image column with --image-column."
                )
        elif options.text_column not in cols:
            raise MissingColumnError(
                f"text column {options.text_column!r} not found in {f.relpath!r}; its columns "
                f"are {shown}. Name the text column with --text-column."
            )
        if options.id_column is not None and options.id_column not in cols:
            raise MissingColumnError(
                f"id column {options.id_column!r} not found in {f.relpath!r}; its columns are "
                f"{shown}. Name the id column with --id-column, or leave it out to generate ids."
            )
        for c in options.columns or ():
            if c not in cols:
                raise MissingColumnError(
                    f"column {c!r} (from --columns) not found in {f.relpath!r}; its columns are {shown}"
                )
    id_column = options.id_column
    if id_column is None:
        with_id = [f.relpath for f in files if "id" in columns_by_file.get(f.relpath, {})]
        without = [
            f.relpath for f in files if columns_by_file.get(f.relpath) and f.relpath not in with_id
        ]
        if with_id and without:
            raise MissingColumnError(
                f"some files have an 'id' column ({', '.join(with_id[:3])}) and some do not "
                f"({', '.join(without[:3])}); name the id column with --id-column so every "
                "file agrees, or remove the 'id' column to generate ids"
            )
        id_column = "id" if with_id else None
    for f in files:
        present = tuple(columns_by_file.get(f.relpath, {}))
        kept = options.columns if options.columns is not None else present
        reserved = RESERVED_COLUMNS + (CHUNK_COLUMNS if options.chunking == "auto" else ())
        clash = [c for c in kept if c in reserved and c != id_column]
        if clash:
            raise MissingColumnError(
                f"column {clash[0]!r} in {f.relpath!r} would clash with the output's own "
                f"{clash[0]!r} column; leave it out with --columns, or use it as --id-column"
            )
    return id_column


def find_duplicates(
    fs_in: fsspec.AbstractFileSystem,
    splits: list[Split],
    scans: Mapping[int, SplitScan],
    spec: DocumentSpec,
    options: EmbedOptions,
    run: RunOptions,
) -> dict[int, list[int]]:
    """Rows to drop as later duplicates (keep-first), or DuplicateIdError by default."""
    hashes = [scans[s.index].id_hashes for s in splits]
    if not hashes:
        return {}
    all_hashes = np.concatenate(hashes)
    split_of = np.concatenate(
        [np.full(len(h), s.index, np.int64) for s, h in zip(splits, hashes, strict=True)]
    )
    row_of = np.concatenate([scans[s.index].id_rows for s in splits])
    order = np.argsort(all_hashes, kind="stable")  # stable: first occurrence stays first
    sorted_hashes = all_hashes[order]
    later = np.zeros(len(order), dtype=bool)
    later[1:] = sorted_hashes[1:] == sorted_hashes[:-1]
    if not later.any():
        return {}
    dup_positions = order[later]
    if options.on_duplicate == "error":
        dup_hashes = list(dict.fromkeys(int(h) for h in all_hashes[np.sort(dup_positions)]))
        names = _ids_for_hashes(
            fs_in, splits, split_of, all_hashes, dup_hashes[:_DUPLICATES_SHOWN], spec, run
        )
        if names:
            raise DuplicateIdError(
                f"{len(dup_positions)} rows repeat an id seen before, e.g. {', '.join(repr(n) for n in names)}. "
                "Make ids unique, name another --id-column, or pass --on-duplicate keep-first "
                "to keep each id's first row."
            )
        return {}  # 64-bit hash collisions of distinct ids, not duplicates
    drop: dict[int, list[int]] = defaultdict(list)
    for pos in dup_positions:
        drop[int(split_of[pos])].append(int(row_of[pos]))
    return dict(drop)


def _ids_for_hashes(
    fs_in: fsspec.AbstractFileSystem,
    splits: list[Split],
    split_of: np.ndarray,
    all_hashes: np.ndarray,
    wanted: Iterable[int],
    spec: DocumentSpec,
    run: RunOptions,
) -> list[str]:
    """The id strings behind some hashes, read back from the splits that hold them, and
    confirmed to occur more than once."""
    wanted = set(wanted)
    where = sorted({int(s) for s, h in zip(split_of, all_hashes, strict=True) if int(h) in wanted})
    seen: Counter[str] = Counter()
    for index in where:
        split = splits[index]
        for _, docs in iter_documents(fs_in, split, spec, batch_rows=run.read_batch_rows):
            for doc_id, h in zip(docs.ids, id_hashes(docs.ids), strict=True):
                if int(h) in wanted:
                    seen[doc_id] += 1
    return [i for i, n in seen.items() if n > 1]
