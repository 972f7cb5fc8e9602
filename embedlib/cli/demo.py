"""The embedded default corpus and `embedlib demo`.

The corpus is the documentation of the installed Python standard library
(`stdlib_docs.stdlib_corpus`) and the three documents of the classic example.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from embedlib.client import Client
from embedlib.embed.job import embed_corpus
from embedlib.embed.stdlib_docs import stdlib_corpus
from embedlib.index.build.driver import build_index
from embedlib.index.store.layout import CURRENT
from embedlib.options import EmbedOptions, RunOptions
from embedlib.search.sharded_index import ShardedIndex
from embedlib.sets.embedding_set import EmbeddingSet

QUERIES = (
    "how to train a neural net",
    "compress a file",
    "funny animal clip",
    "parse command line arguments",
    "send an email",
)


def write_corpus(path: Path, table: pa.Table) -> None:
    """Write the corpus, leaving an identical file untouched (so a re-run resumes)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=500)
    data = buf.getvalue()
    if path.exists() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def run_demo(
    out: str, *, run: RunOptions | None = None, queries: tuple[str, ...] = QUERIES
) -> dict[str, list[tuple[str, float]]]:
    """Embed the standard-library corpus on Ray, build its index, print the nearest
    neighbours of a few queries from the index, and return them as {query: [(id, score)]}."""
    run = run or RunOptions()
    root = Path(out)
    corpus = root / "corpus" / "stdlib_docs.parquet"
    table = stdlib_corpus()
    write_corpus(corpus, table)
    print(
        f"demo corpus: {table.num_rows} documents from the Python {sys.version.split()[0]} standard library -> {corpus}"
    )
    embeddings = str(root / "embeddings")
    print(embed_corpus(str(corpus), embeddings, options=EmbedOptions(split_rows=500), run=run))
    eset = EmbeddingSet(embeddings)
    index_root = root / "index"
    built_from = eset.manifest.created_at
    stamp = index_root / "built-from.txt"
    if not (index_root / CURRENT).exists() or not stamp.exists() or stamp.read_text() != built_from:
        print(build_index(embeddings, str(index_root), run=run, echo=print))
        stamp.write_text(built_from)
    index = ShardedIndex(str(index_root))
    results = {}
    # the classic queries share no word with their answers: the vectors alone (mode
    # dense) show what embeddings find; hybrid, the default for text, fuses BM25 in
    dense = index.search_text(queries, 5, mode="dense")
    hybrid = index.search_text(queries, 3, include=())
    for query, hits, fused in zip(queries, dense, hybrid, strict=True):
        results[query] = [(h.id, h.score) for h in hits]
        print(f"\nquery: {query!r} (mode dense)")
        for h in hits:
            print(f"  {h.score:.3f}  {h.id:<40} {(h.text or '')[:80]}")
        print("  hybrid (dense + BM25): " + ", ".join(h.id for h in fused))
    return results


def show_served(url: str) -> None:
    """Ask the served demo index a few questions over HTTP and print how to ask more."""
    client = Client(url)
    print(f"\nthe demo index is served at {url}; asked over HTTP:")
    for query in QUERIES[:2]:
        for mode in ("dense", "hybrid"):
            top = client.search(query, k=3, mode=mode)
            print(f"  {query!r} ({mode}): " + ", ".join(f"{h.id} ({h.score:.3f})" for h in top))
    body = json.dumps({"query": "how to train a neural net", "k": 3})
    print(f"\ntry:  curl -s {url}/v1/search -H 'Content-Type: application/json' -d '{body}'")
    print(f"      embedlib query {url} 'read a zip archive' -k 5")
    print("Ctrl-C stops the server.")
