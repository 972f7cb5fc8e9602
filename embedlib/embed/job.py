"""The embedding job: corpus -> embedding set, resumable, exactly once per row.

Steps: find files and plan splits; compare with any earlier run at the same output;
scan every split (columns, counts, ids) so bad input fails before any encoding; embed
the splits that are not committed yet; commit each one atomically; write the manifest.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
from fsspec.core import url_to_fs
from tqdm.auto import tqdm

from embedlib.distributed import check_reachable_by_workers, check_workers_reach, choose_runner
from embedlib.embed.chunking import ChunkOptions
from embedlib.embed.corpus.discover import SourceFile, discover
from embedlib.embed.corpus.plan import Split, plan_digest, plan_splits
from embedlib.embed.documents import CHUNK_COLUMNS, RESERVED_COLUMNS, DocumentSpec, id_hashes
from embedlib.embed.pool import Runner, make_runner
from embedlib.embed.split import SplitContext, SplitResult, SplitScan, iter_documents
from embedlib.exceptions import DuplicateIdError, IncompatibleOutputError, MissingColumnError
from embedlib.models.fingerprint import ModelFingerprint
from embedlib.options import EmbedOptions, RunOptions
from embedlib.sets.embedding_set import (
    ATTEMPTS,
    COMMITS,
    FORMAT_NAME,
    JOB,
    QUARANTINE,
    EmbeddingSetManifest,
    PartEntry,
    join,
)
from embedlib.storage import MANIFEST, human, read_json, write_json_atomic

_DUPLICATES_SHOWN = 5
# A corpus up to this size is embedded in this process when no cluster is given or
# running: Ray's start and stop (~3-4 s) cost more than its workers save (measured in
# docs/benchmarks.md). Compressed files count for about this many times their size.
SMALL_CORPUS_BYTES = 4_000_000
COMPRESSION_RATIO = 4


@dataclass
class EmbedReport:
    """What a run did. `documents` counts the whole set; the rest counts this run."""

    output: str
    documents: int
    splits: int
    splits_done_now: int
    splits_already_committed: int
    documents_now: int
    seconds: float
    encode_seconds: float
    rows_read: int
    skipped: dict[str, int]
    quarantined: int
    truncated: int
    per_node: dict[str, dict[str, int]] = field(default_factory=dict)
    ignored_files: list[str] = field(default_factory=list)
    ran: str = ""  # where it ran, and why
    chunks: int = 0  # rows of the whole set (one per chunk; one per document unchunked)
    chunks_now: int = 0
    tokens_now: int = 0  # tokens encoded this run

    @property
    def documents_per_s(self) -> float:
        """Documents embedded per second of the embedding phase (after scan and start-up)."""
        return self.documents_now / self.encode_seconds if self.encode_seconds > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        """Tokens encoded per second of the embedding phase."""
        return self.tokens_now / self.encode_seconds if self.encode_seconds > 0 else 0.0

    def __str__(self) -> str:
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
        lines = [
            f"embedding set: {self.output}",
            f"  documents:   {self.documents} in {self.splits} splits "
            f"({self.splits_done_now} embedded now, {self.splits_already_committed} already committed)",
            f"  chunks:      {self.chunks} ({self.chunks_now} embedded now)",
            f"  this run:    {self.documents_now} documents in {self.seconds:.1f}s; "
            f"embedding {self.encode_seconds:.1f}s ({self.documents_per_s:.1f} documents/s, "
            f"{self.tokens_per_s:.0f} tokens/s)",
            f"  rows read:   {self.rows_read}; skipped: {skipped}",
            f"  quarantined: {self.quarantined} (see {QUARANTINE}/); truncated: {self.truncated}",
        ]
        if self.ran:
            lines.append(f"  ran {self.ran}")
        for node, stats in sorted(self.per_node.items()):
            lines.append(
                f"  node {node[:12]}: {stats['splits']} splits, {stats['documents']} documents"
            )
        if self.ignored_files:
            lines.append(f"  ignored (unknown format): {', '.join(self.ignored_files[:10])}")
        return "\n".join(lines)


def embed_corpus(
    source: str,
    out: str,
    *,
    options: EmbedOptions | None = None,
    run: RunOptions | None = None,
) -> EmbedReport:
    """Embed the corpus at `source` (file, folder or glob; any fsspec URL) into an
    embedding set at `out`. Re-running the same call resumes: committed splits are kept."""
    options = options or EmbedOptions()
    run = run or RunOptions()
    start = time.perf_counter()
    fs_in, files, ignored = discover(
        source, format=options.format, storage_options=run.storage_options
    )
    splits = plan_splits(fs_in, files, split_rows=options.split_rows)
    digest = plan_digest(splits)
    text_bytes = sum(f.size * (COMPRESSION_RATIO if f.compression else 1) for f in files)
    run, runner_reason = choose_runner(
        run, small=text_bytes <= SMALL_CORPUS_BYTES, work=f"the corpus ({human(text_bytes)})",
        urls=(source, out),
    )  # fmt: skip
    fs_out, out_path = url_to_fs(out, **run.storage_options)
    if run.runner == "ray":
        check_reachable_by_workers(source, out)
        check_workers_reach(out, run)
    job = _prepare_output(fs_out, out_path, out, options, digest, overwrite=run.overwrite)
    runner: Runner | None = None
    try:
        if job is None:
            runner = make_runner(run)
            job = _scan_and_validate(runner, fs_in, fs_out, out_path, splits, files, options, run)
            job.update(source=source, options=options.to_dict(), plan_digest=digest)
            job["splits"] = [s.to_dict() for s in splits]
            fs_out.makedirs(out_path, exist_ok=True)
            write_json_atomic(fs_out, join(out_path, JOB), job)
        committed = _committed(fs_out, out_path)
        todo = [s for s in splits if s.index not in committed]
        spec = DocumentSpec(
            text_column=options.text_column,
            id_column=job["id_column"],
            columns=options.columns,
        )
        ctx = SplitContext(
            fs_in, fs_out, out_path, spec, run.read_batch_rows, options.dtype,
            chunking=chunk_options(options),
        )  # fmt: skip
        drop_rows = {int(k): v for k, v in job.get("drop_rows", {}).items()}
        per_node: dict[str, Counter[str]] = defaultdict(Counter)
        encode_seconds = 0.0
        if todo:
            runner = runner or make_runner(run)
            fingerprint = runner.start_encoders(options, len(todo))
            _check_fingerprint(fs_out, out_path, out, job, fingerprint)
            total = sum(job["documents_per_split"][s.index] for s in todo)
            encode_start = time.perf_counter()
            with tqdm(total=total, unit="doc", desc="embedding", disable=not run.progress) as bar:
                for result in runner.embed(todo, ctx, drop_rows):
                    record = _commit(fs_out, out_path, splits[result.index], result)
                    committed[result.index] = record
                    per_node[result.node]["splits"] += 1
                    per_node[result.node]["documents"] += result.documents
                    bar.update(result.documents)
            encode_seconds = time.perf_counter() - encode_start
        else:
            fingerprint = ModelFingerprint.from_dict(job["fingerprint"])
    finally:
        if runner is not None:
            runner.close()
    manifest_path = join(out_path, MANIFEST)
    if not todo and fs_out.exists(manifest_path):
        # a finished set: leave it as it is
        manifest = EmbeddingSetManifest.read(fs_out, out_path)
    else:
        manifest = _write_manifest(
            fs_out, out_path, source, files, splits, committed, job, options, fingerprint
        )
    if fs_out.exists(join(out_path, ATTEMPTS)):
        fs_out.rm(join(out_path, ATTEMPTS), recursive=True)
    now = [committed[s.index] for s in todo]
    return EmbedReport(
        output=out,
        documents=manifest.documents,
        splits=len(splits),
        splits_done_now=len(todo),
        splits_already_committed=len(splits) - len(todo),
        documents_now=sum(r["documents"] for r in now),
        seconds=time.perf_counter() - start,
        encode_seconds=encode_seconds,
        rows_read=sum(r["rows_read"] for r in now),
        skipped=dict(sum((Counter(r["skipped"]) for r in now), Counter())),
        quarantined=sum(r["quarantined"] for r in now),
        truncated=sum(r["truncated"] for r in now),
        chunks=int(manifest.counts.get("chunks", manifest.documents)),
        chunks_now=sum(r.get("chunks", r["documents"]) for r in now),
        tokens_now=sum(r.get("tokens", 0) for r in now),
        per_node={k: dict(v) for k, v in per_node.items()},
        ignored_files=ignored,
        ran=runner_reason,
    )


_LAYOUT = (MANIFEST, JOB, COMMITS, ATTEMPTS, QUARANTINE)


def _prepare_output(
    fs: fsspec.AbstractFileSystem,
    path: str,
    url: str,
    options: EmbedOptions,
    digest: str,
    *,
    overwrite: bool,
) -> dict[str, Any] | None:
    """The earlier run's job record when this run continues it; None for a fresh start."""
    if not fs.exists(path):
        return None
    entries = [e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(path, detail=False)]
    ours = [
        e for e in entries if e in _LAYOUT or (e.startswith("part-") and e.endswith(".parquet"))
    ]
    foreign = sorted(set(entries) - set(ours))
    if overwrite:
        for e in ours:
            fs.rm(join(path, e), recursive=True)
        return None
    if not ours:
        if foreign:
            raise IncompatibleOutputError(
                f"{url!r} is not empty and is not an embedding set (it holds {', '.join(foreign[:5])}); "
                "choose an empty or new output location"
            )
        return None
    if JOB not in entries:
        raise IncompatibleOutputError(
            f"{url!r} holds embedding-set files but no {JOB} to resume from; re-run with "
            "--overwrite to start again, or choose a new output location"
        )
    job: dict[str, Any] = read_json(fs, join(path, JOB))
    before = job.get("options", {})
    now = options.to_dict()
    changed = {
        k: (before.get(k), v)
        for k, v in now.items()
        if before.get(k) != v and k != "backend"  # the model fingerprint decides that one
    }
    if changed:
        detail = "; ".join(f"{k}: was {a!r}, now {b!r}" for k, (a, b) in changed.items())
        raise IncompatibleOutputError(
            f"{url!r} was started with other options ({detail}). Re-run with the same "
            "options to resume, --overwrite to start again, or choose a new output location."
        )
    if job.get("plan_digest") != digest:
        raise IncompatibleOutputError(
            f"the source changed since {url!r} was started (its files or their sizes differ). "
            "Re-run with --overwrite to embed it again, or choose a new output location."
        )
    return job


def _check_fingerprint(
    fs: fsspec.AbstractFileSystem, path: str, url: str, job: dict[str, Any], fp: ModelFingerprint
) -> None:
    if job.get("fingerprint") is None:
        job["fingerprint"] = fp.to_dict()
        write_json_atomic(fs, join(path, JOB), job)
        return
    before = ModelFingerprint.from_dict(job["fingerprint"])
    if before.differences(fp):
        try:
            before.require_compatible(fp, what=f"the output {url!r}", other_what="this run")
        except Exception as e:
            raise IncompatibleOutputError(f"{e} Use --overwrite to start again.") from e


def _scan_and_validate(
    runner: Runner,
    fs_in: fsspec.AbstractFileSystem,
    fs_out: fsspec.AbstractFileSystem,
    out_path: str,
    splits: list[Split],
    files: list[SourceFile],
    options: EmbedOptions,
    run: RunOptions,
) -> dict[str, Any]:
    """Read every split once: check columns and ids before any encoding starts."""
    explicit_id = options.id_column
    spec = DocumentSpec(
        text_column=options.text_column,
        id_column=explicit_id or "id",
        columns=options.columns,
        generate_missing_ids=explicit_id is None,
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
    id_column = _resolve_columns(columns_by_file, files, options)
    drop = _find_duplicates(fs_in, splits, scans, spec, options, run)
    return {
        "format": FORMAT_NAME,
        "id_column": id_column,
        "documents_per_split": [scans[s.index].documents for s in splits],
        "rows_per_split": [scans[s.index].rows_read for s in splits],
        "drop_rows": {str(k): v for k, v in drop.items()},
        "fingerprint": None,
    }


def _resolve_columns(
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
        if options.text_column not in cols:
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


def _find_duplicates(
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


def _committed(fs: fsspec.AbstractFileSystem, path: str) -> dict[int, dict[str, Any]]:
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


def _commit(
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


def _write_manifest(
    fs: fsspec.AbstractFileSystem,
    path: str,
    source: str,
    files: list[SourceFile],
    splits: list[Split],
    committed: Mapping[int, Mapping[str, Any]],
    job: Mapping[str, Any],
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
        id_column=job["id_column"],
        hash={"column": "text_hash", "algorithm": "blake2b-128", "of": "the embedded text"},
        source={
            "url": source,
            "plan_digest": job["plan_digest"],
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


def chunk_options(options: EmbedOptions) -> ChunkOptions | None:
    """How the job chunks its texts; None: it truncates them."""
    if options.chunking == "none":
        return None
    return ChunkOptions(options.chunk_tokens, options.chunk_overlap, options.max_chunks)


def chunking_record(options: EmbedOptions) -> dict[str, Any] | None:
    """The manifest's record of the chunking (None: texts truncated)."""
    if options.chunking == "none":
        return None
    return {"chunk_tokens": options.chunk_tokens, "overlap": options.chunk_overlap,
            "max_chunks": options.max_chunks, "columns": list(CHUNK_COLUMNS)}  # fmt: skip


def _keeps_text(options: EmbedOptions) -> bool:
    return options.columns is None or options.text_column in options.columns
