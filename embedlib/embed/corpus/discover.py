"""Find the files of a corpus on any fsspec URL: a file, a folder, or a glob."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any, Literal

import fsspec
from fsspec.core import url_to_fs
from fsspec.utils import infer_compression

from embedlib.embed.images import IMAGE_EXTENSIONS
from embedlib.exceptions import SourceError

Format = Literal["parquet", "jsonl", "csv", "tsv", "text", "image"]

_EXTENSIONS: dict[str, Format] = {
    "parquet": "parquet",
    "pq": "parquet",
    "jsonl": "jsonl",
    "ndjson": "jsonl",
    "json": "jsonl",
    "csv": "csv",
    "tsv": "tsv",
    "txt": "text",
    "text": "text",
    **dict.fromkeys(IMAGE_EXTENSIONS, "image"),
}
FORMATS: tuple[Format, ...] = ("parquet", "jsonl", "csv", "tsv", "text", "image")


@dataclass(frozen=True)
class SourceFile:
    """One input file. `relpath` is relative to the corpus root, so ids made from it stay
    the same when the corpus moves to another URL."""

    path: str
    relpath: str
    format: Format
    size: int
    compression: str | None
    version: str  # changes when the file changes (mtime, etag or checksum, per store)


def _format_of(path: str, compression: str | None) -> Format | None:
    name = posixpath.basename(path).lower()
    if compression:
        name = name.rsplit(".", 1)[0]
    ext = name.rsplit(".", 1)[-1] if "." in name else ""
    return _EXTENSIONS.get(ext)


def _hidden(relpath: str) -> bool:
    return any(part.startswith((".", "_")) for part in relpath.split("/"))


def _version(info: dict[str, Any]) -> str:
    for key in ("ETag", "etag", "md5Hash", "crc32c", "mtime", "LastModified", "created"):
        if info.get(key) is not None:
            return f"{key}={info[key]}"
    return ""


def discover(
    source: str,
    *,
    format: Format | None = None,
    storage_options: dict[str, Any] | None = None,
) -> tuple[fsspec.AbstractFileSystem, list[SourceFile], list[str]]:
    """List the corpus files under `source`, sorted by relative path.

    Returns the filesystem, the files, and the relative paths that were ignored because
    their format is unknown (give `format` to read them anyway). Hidden files and files
    under folders starting with '_' or '.' (e.g. `_SUCCESS`, `.DS_Store`) are skipped.
    """
    fs, path = url_to_fs(source, **(storage_options or {}))
    path = path.rstrip("/") or path
    if _has_magic(path):
        root = _glob_root(path)
        paths = [p for p in fs.glob(path) if not fs.isdir(p)]
    elif fs.isdir(path):
        root = path
        paths = list(fs.find(path))
    elif fs.exists(path):
        root = posixpath.dirname(path)
        paths = [path]
    else:
        raise SourceError(f"the source {source!r} does not exist: give a file, folder or glob")
    files: list[SourceFile] = []
    ignored: list[str] = []
    for p in sorted(paths):
        rel = posixpath.relpath(p, root) if root else p
        if _hidden(rel):
            continue
        compression = infer_compression(p)
        fmt = format or _format_of(p, compression)
        if fmt is None:
            ignored.append(rel)
            continue
        info = fs.info(p)
        files.append(
            SourceFile(
                path=p,
                relpath=rel,
                format=fmt,
                size=int(info.get("size") or 0),
                compression=compression,
                version=_version(info),
            )
        )
    if not files:
        hint = f" (ignored, unknown format: {', '.join(ignored[:5])})" if ignored else ""
        raise SourceError(
            f"no corpus files found at {source!r}{hint}; supported: .parquet, .jsonl, .csv, "
            ".tsv, .txt (optionally compressed), image files (.jpg, .png, .webp, .gif, ...), "
            "or name one with --format"
        )
    return fs, files, ignored


def _has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def _glob_root(pattern: str) -> str:
    parts = pattern.split("/")
    keep = []
    for part in parts:
        if _has_magic(part):
            break
        keep.append(part)
    return "/".join(keep)
