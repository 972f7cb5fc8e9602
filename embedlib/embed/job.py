"""The embedding job: corpus -> embedding set, resumable, exactly once per row.

Steps: find files and plan splits; compare with any earlier run at the same output;
scan every split (columns, counts, ids) so bad input fails before any encoding; embed
the splits that are not committed yet; commit each one atomically; write the manifest.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace

import fsspec
from fsspec.core import url_to_fs
from tqdm.auto import tqdm

from embedlib.distributed import check_reachable_by_workers, check_workers_reach, choose_runner
from embedlib.embed.chunking import chunk_options
from embedlib.embed.commit import commit_split, committed_splits, write_manifest
from embedlib.embed.corpus.discover import SourceFile, discover
from embedlib.embed.corpus.plan import plan_digest, plan_splits
from embedlib.embed.documents import DocumentSpec
from embedlib.embed.images import IMAGE
from embedlib.embed.pool import Runner, make_runner
from embedlib.embed.record import JobRecord
from embedlib.embed.scan import scan_and_validate
from embedlib.embed.split import SplitContext
from embedlib.exceptions import IncompatibleOutputError, SourceError
from embedlib.models.fingerprint import ModelFingerprint
from embedlib.options import EmbedOptions, RunOptions
from embedlib.sets.embedding_set import (
    ATTEMPTS,
    COMMITS,
    JOB,
    QUARANTINE,
    EmbeddingSetManifest,
    join,
)
from embedlib.storage import MANIFEST, human

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
            lines.append(
                "  ignored (an unknown format, or images an image column points to): "
                + ", ".join(self.ignored_files[:10])
            )
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
    files, options, referenced = _image_options(files, options)
    ignored = [*ignored, *referenced]
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
            job = scan_and_validate(runner, fs_in, fs_out, out_path, splits, files, options, run)
            job.source, job.options, job.plan_digest = source, options.to_dict(), digest
            job.splits = [s.to_dict() for s in splits]
            fs_out.makedirs(out_path, exist_ok=True)
            job.write(fs_out, out_path)
        committed = committed_splits(fs_out, out_path)
        todo = [s for s in splits if s.index not in committed]
        spec = DocumentSpec(
            text_column=options.text_column,
            id_column=job.id_column,
            columns=options.columns,
            image_column=options.image_column,
        )
        ctx = SplitContext(
            fs_in, fs_out, out_path, spec, run.read_batch_rows, options.dtype,
            chunking=chunk_options(options),
        )  # fmt: skip
        drop_rows = job.drop_rows
        per_node: dict[str, Counter[str]] = defaultdict(Counter)
        encode_seconds = 0.0
        if todo:
            runner = runner or make_runner(run)
            fingerprint = runner.start_encoders(options, len(todo))
            _check_fingerprint(fs_out, out_path, out, job, fingerprint)
            total = sum(job.documents_per_split[s.index] for s in todo)
            encode_start = time.perf_counter()
            with tqdm(total=total, unit="doc", desc="embedding", disable=not run.progress) as bar:
                for result in runner.embed(todo, ctx, drop_rows):
                    record = commit_split(fs_out, out_path, splits[result.index], result)
                    committed[result.index] = record
                    per_node[result.node]["splits"] += 1
                    per_node[result.node]["documents"] += result.documents
                    bar.update(result.documents)
            encode_seconds = time.perf_counter() - encode_start
        else:
            assert job.fingerprint is not None  # every split committed: encoders had run
            fingerprint = job.fingerprint
    finally:
        if runner is not None:
            runner.close()
    manifest_path = join(out_path, MANIFEST)
    if not todo and fs_out.exists(manifest_path):
        # a finished set: leave it as it is
        manifest = EmbeddingSetManifest.read(fs_out, out_path)
    else:
        manifest = write_manifest(
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


def _image_options(
    files: list[SourceFile], options: EmbedOptions
) -> tuple[list[SourceFile], EmbedOptions, list[str]]:
    """A corpus of image files only is embedded as images (column "image"). Beside tables,
    image files are what a table's image column points to, not rows of their own: the
    tables are embedded (their images with --image-column, else their text) and the image
    files are returned third, to be reported as ignored."""
    images = [f.relpath for f in files if f.format == "image"]
    if not images:
        return files, options, []
    tables = [f for f in files if f.format != "image"]
    if tables:
        return tables, options, images
    if options.image_column not in (None, IMAGE):
        raise SourceError(
            f"--image-column {options.image_column!r} names a table column; a folder of image "
            "files needs none"
        )
    return files, replace(options, image_column=IMAGE), []


_LAYOUT = (MANIFEST, JOB, COMMITS, ATTEMPTS, QUARANTINE)


def _prepare_output(
    fs: fsspec.AbstractFileSystem,
    path: str,
    url: str,
    options: EmbedOptions,
    digest: str,
    *,
    overwrite: bool,
) -> JobRecord | None:
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
    job = JobRecord.read(fs, path)
    before = job.options
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
    if job.plan_digest != digest:
        raise IncompatibleOutputError(
            f"the source changed since {url!r} was started (its files or their sizes differ). "
            "Re-run with --overwrite to embed it again, or choose a new output location."
        )
    return job


def _check_fingerprint(
    fs: fsspec.AbstractFileSystem, path: str, url: str, job: JobRecord, fp: ModelFingerprint
) -> None:
    if job.fingerprint is None:
        job.fingerprint = fp
        job.write(fs, path)
        return
    before = job.fingerprint
    if before.differences(fp):
        try:
            before.require_compatible(fp, what=f"the output {url!r}", other_what="this run")
        except Exception as e:
            raise IncompatibleOutputError(f"{e} Use --overwrite to start again.") from e
