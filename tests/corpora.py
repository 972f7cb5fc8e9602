"""Small seeded corpora written in every supported format."""

from __future__ import annotations

import csv
import gzip
import io
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq

WORDS = [
    "cat",
    "dog",
    "video",
    "tutorial",
    "machine",
    "learning",
    "shoes",
    "cheap",
    "buy",
    "river",
    "mountain",
    "city",
    "train",
    "neural",
    "network",
    "compress",
    "file",
    "music",
    "guitar",
    "recipe",
    "bread",
    "coffee",
    "science",
    "physics",
    "star",
]


def sentences(n: int, *, seed: int = 0, min_words: int = 3, max_words: int = 30) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(min_words, max_words))) for _ in range(n)]


def table(n: int, *, seed: int = 0) -> pa.Table:
    texts = sentences(n, seed=seed)
    return pa.table(
        {
            "doc_id": [f"d{i}" for i in range(n)],
            "body": texts,
            "lang": ["en" if i % 3 else "fr" for i in range(n)],
            "year": [2000 + i % 25 for i in range(n)],
        }
    )


def to_bytes(t: pa.Table, fmt: str, *, row_group_size: int = 50) -> bytes:
    """`t` encoded as `fmt`: parquet, jsonl, csv, tsv, text (the body column only)."""
    rows = t.to_pylist()
    if fmt == "parquet":
        buf = io.BytesIO()
        pq.write_table(t, buf, row_group_size=row_group_size)
        return buf.getvalue()
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows).encode()
    if fmt in ("csv", "tsv"):
        out = io.StringIO()
        w = csv.DictWriter(out, fieldnames=t.column_names, delimiter="," if fmt == "csv" else "\t")
        w.writeheader()
        w.writerows(rows)
        return out.getvalue().encode()
    if fmt == "text":
        return "".join(r["body"] + "\n" for r in rows).encode()
    raise ValueError(fmt)


EXTENSION = {"parquet": "parquet", "jsonl": "jsonl", "csv": "csv", "tsv": "tsv", "text": "txt"}


def write(fs, path: str, data: bytes, *, gz: bool = False) -> str:
    if gz:
        data = gzip.compress(data, mtime=0)
        path += ".gz"
    with fs.open(path, "wb") as fh:
        fh.write(data)
    return path


def module_documents(names: list[str]) -> dict[str, str]:
    """Long documents nobody on the project wrote: each standard-library module's
    docstring followed by every public member's signature and docstring."""
    import importlib
    import inspect

    docs = {}
    for name in names:
        module = importlib.import_module(name)
        parts = [f"{name}\n\n{inspect.getdoc(module) or ''}\n"]
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            doc = inspect.getdoc(obj)
            if doc and (inspect.isfunction(obj) or inspect.isclass(obj)):
                parts.append(f"\n{name}.{attr}\n    {doc}\n")
        docs[name] = "".join(parts)
    return docs
