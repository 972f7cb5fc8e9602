"""Deterministic split planning: the same input gives the same splits, whatever the
number of workers. Large files are split (Parquet by row groups, JSON Lines and plain text
by byte ranges at line boundaries); CSV and compressed files are read whole; image files
are grouped, `split_rows` images to a split."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Literal

import fsspec
import pyarrow.parquet as pq

from embedlib.embed.corpus.discover import SourceFile
from embedlib.exceptions import SourceError

SplitKind = Literal["row_groups", "bytes", "whole", "images"]
_SCAN_BLOCK = 8 << 20


@dataclass(frozen=True)
class Split:
    """A contiguous piece of one file, or a run of image files.

    `start`/`stop` are row-group indices (kind "row_groups"), byte offsets at line starts
    ("bytes"), or 0/0 ("whole"). `first_row` is the file-level index of the split's first
    row or line, used for stable generated ids. Kind "images" holds image files, one row
    each: `members` (`file` is the first of them), `start`/`stop` their positions among
    the corpus's images.
    """

    index: int
    file: SourceFile
    kind: SplitKind
    start: int
    stop: int
    first_row: int
    members: tuple[SourceFile, ...] = ()

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}"

    def describe(self) -> str:
        if self.kind == "whole":
            return self.file.relpath
        if self.kind == "images":
            return f"{len(self.members)} images from {self.file.relpath}"
        unit = "row groups" if self.kind == "row_groups" else "bytes"
        return f"{self.file.relpath} [{unit} {self.start}:{self.stop}]"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def plan_splits(
    fs: fsspec.AbstractFileSystem, files: list[SourceFile], *, split_rows: int
) -> list[Split]:
    """Split `files` into splits of about `split_rows` rows each (never fewer than one row
    group or one line), numbered in file order."""
    if split_rows < 1:
        raise ValueError(f"split_rows must be >= 1, got {split_rows}")
    pieces: list[tuple[SourceFile, SplitKind, int, int, int]] = []
    images = [f for f in files if f.format == "image"]
    for f in files:
        if f.format == "image" or f.size == 0:  # images: split below (an empty one is quarantined)
            continue
        if f.format == "parquet" and not f.compression:
            pieces.extend(
                (f, "row_groups", a, b, r) for a, b, r in _parquet_ranges(fs, f, split_rows)
            )
        elif f.format in ("jsonl", "text") and not f.compression:
            pieces.extend((f, "bytes", a, b, r) for a, b, r in _line_ranges(fs, f, split_rows))
        else:
            pieces.append((f, "whole", 0, 0, 0))
    splits = [
        Split(index=i, file=f, kind=k, start=a, stop=b, first_row=r)
        for i, (f, k, a, b, r) in enumerate(pieces)
    ]
    for start in range(0, len(images), split_rows):
        members = tuple(images[start : start + split_rows])
        splits.append(
            Split(index=len(splits), file=members[0], kind="images", start=start,
                  stop=start + len(members), first_row=0, members=members)
        )  # fmt: skip
    return splits


def plan_digest(splits: list[Split]) -> str:
    """A digest of the plan and the versions of its files: equal digests, equal splits."""
    payload = json.dumps([s.to_dict() for s in splits], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _parquet_ranges(
    fs: fsspec.AbstractFileSystem, f: SourceFile, split_rows: int
) -> Iterator[tuple[int, int, int]]:
    try:
        with fs.open(f.path, "rb") as fh:
            meta = pq.ParquetFile(fh).metadata
    except Exception as e:
        raise SourceError(f"cannot read Parquet file {f.path!r}: {e}") from e
    start, rows, first = 0, 0, 0
    for g in range(meta.num_row_groups):
        rows += meta.row_group(g).num_rows
        if rows >= split_rows:
            yield start, g + 1, first
            start, first, rows = g + 1, first + rows, 0
    if start < meta.num_row_groups:
        yield start, meta.num_row_groups, first


def _line_ranges(
    fs: fsspec.AbstractFileSystem, f: SourceFile, split_rows: int
) -> Iterator[tuple[int, int, int]]:
    """Byte ranges holding `split_rows` lines each, found by one streaming pass."""
    start = 0  # byte offset of the current split's first line
    first = 0  # index of the current split's first line
    lines = 0  # complete lines in the current split
    offset = 0  # byte offset of the block being scanned
    with fs.open(f.path, "rb") as fh:
        while block := fh.read(_SCAN_BLOCK):
            pos = 0
            while True:
                need = split_rows - lines
                end = _nth_newline(block, pos, need)
                if end < 0:
                    lines += block.count(b"\n", pos)
                    break
                cut = offset + end + 1
                yield start, cut, first
                first += split_rows
                start, lines, pos = cut, 0, end + 1
            offset += len(block)
    if start < f.size:
        yield start, f.size, first


def _nth_newline(block: bytes, pos: int, n: int) -> int:
    """Index of the n-th newline at or after `pos`, or -1 when the block has fewer."""
    if block.count(b"\n", pos) < n:
        return -1
    for _ in range(n):
        end = block.find(b"\n", pos)
        pos = end + 1
    return end
