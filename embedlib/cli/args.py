"""The options of the `embedlib` commands, shared by `cli.py`, `cli_uses.py` and the
Ray job entry points in `jobs/`: each `add_*_arguments` registers a command's options,
and each `*_options` turns the parsed arguments into the library's typed options."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from embedlib.embed.corpus.discover import FORMATS
from embedlib.models.fingerprint import DEFAULT_MODEL
from embedlib.options import BACKENDS, METRICS, EmbedOptions, RunOptions

if TYPE_CHECKING:
    from embedlib.index.build.driver import IndexOptions


def _storage_option(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key, value


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Options of how a Ray job runs (shared by every job)."""
    g = p.add_argument_group("running")
    g.add_argument(
        "--address", help="Ray cluster address (default: a running cluster, else a local one)"
    )
    where = g.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="run in this process, without Ray")
    where.add_argument(
        "--ray",
        action="store_true",
        help="run on Ray even when the work is small (default: small work with no cluster "
        "given or running runs in this process)",
    )
    g.add_argument("--workers", type=int, help="encoder actors (default: as many as CPUs allow)")
    g.add_argument(
        "--cpus-per-worker",
        type=float,
        default=1.0,
        help="CPUs per worker (default 1; fractions allowed)",
    )
    g.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per worker (default 0)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument(
        "--storage-option",
        type=_storage_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec storage option for SOURCE and OUT (repeatable), e.g. anon=true",
    )


def add_embed_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `embedlib embed` and `jobs/embed_corpus.py`."""
    p.add_argument("source", help="corpus: a file, folder or glob on any fsspec URL")
    p.add_argument("out", help="output embedding set (folder on any fsspec URL)")
    g = p.add_argument_group("input")
    g.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    g.add_argument(
        "--image-column",
        help="embed images, not texts: the column holding each image's bytes, or its path "
        "relative to the corpus or a URL (a folder of image files needs none; a CLIP-style "
        "--model)",
    )
    g.add_argument(
        "--id-column", help="column holding ids (default: 'id' when present, else path:row)"
    )
    g.add_argument("--columns", help="comma-separated passthrough columns to keep (default: all)")
    g.add_argument(
        "--format", choices=FORMATS, help="read every file as this format (default: by extension)"
    )
    g.add_argument(
        "--split-rows",
        type=int,
        default=1_000,
        help="rows per split, the unit of work of one worker and one part file (default 1000)",
    )
    g.add_argument(
        "--on-duplicate",
        choices=("error", "keep-first"),
        default="error",
        help="what duplicate ids do (default: error)",
    )
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"sentence-transformers model name or path (default {DEFAULT_MODEL})",
    )
    g.add_argument("--batch-size", type=int, default=64, help="encoder batch size (default 64)")
    g.add_argument(
        "--no-normalize", action="store_true", help="keep raw vectors (default: unit length)"
    )
    g.add_argument(
        "--max-seq-length",
        type=int,
        help="truncate texts to this many tokens (default: the model's)",
    )
    g.add_argument(
        "--dims",
        type=int,
        help="Matryoshka models: keep the first N dimensions of each vector (made unit "
        "length again); recorded in the fingerprint, so queries are cut the same way",
    )
    g.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="encoder runtime: auto (= openvino-fp32 on CPU, torch on GPU), torch, "
        "openvino-fp32 (same vectors as torch, ~2.5x faster on CPU), openvino (int8 "
        "quantized, ~5x faster, a model of its own for the fingerprint guard)",
    )
    g.add_argument(
        "--dtype", choices=("float32", "float16"), default="float32", help="stored vector type"
    )
    g.add_argument(
        "--chunking",
        choices=("auto", "none"),
        default="auto",
        help="auto (default): a text longer than the model's window becomes chunks, one row "
        "each (answers name the document and the passage); none: truncate as the model does",
    )
    g.add_argument(
        "--chunk-tokens", type=int, help="tokens per chunk (default: the model's window)"
    )
    g.add_argument(
        "--chunk-overlap", type=int, default=0, help="tokens shared by neighbouring chunks"
    )
    g.add_argument(
        "--max-chunks",
        type=int,
        default=10_000,
        help="a document needing more chunks is quarantined (default 10000)",
    )
    g.add_argument(
        "--metric",
        choices=METRICS,
        default="cosine",
        help="metric hint for the index (default cosine)",
    )
    g = p.add_argument_group("output")
    g.add_argument(
        "--overwrite", action="store_true", help="discard an existing output and start again"
    )
    add_run_arguments(p)


def embed_options(args: argparse.Namespace) -> EmbedOptions:
    return EmbedOptions(
        model=args.model,
        text_column=args.text_column,
        image_column=args.image_column,
        id_column=args.id_column,
        columns=tuple(c.strip() for c in args.columns.split(",") if c.strip())
        if args.columns
        else None,
        normalize=not args.no_normalize,
        max_seq_length=args.max_seq_length,
        dims=args.dims,
        dtype=args.dtype,
        metric=args.metric,
        split_rows=args.split_rows,
        format=args.format,
        on_duplicate=args.on_duplicate,
        backend=args.backend,
        chunking=args.chunking,
        chunk_tokens=args.chunk_tokens,
        chunk_overlap=args.chunk_overlap,
        max_chunks=args.max_chunks,
    )


def run_options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(
        runner="local" if args.local else "ray" if args.ray else "auto",
        address=args.address,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        batch_size=getattr(args, "batch_size", 64),
        overwrite=getattr(args, "overwrite", False),
        progress=not args.no_progress,
        storage_options=dict(args.storage_option),
    )


def _add_plan_options(g: argparse._ArgumentGroup) -> None:
    """Index options shared by `index` and `pipeline`."""
    g.add_argument("--factory", default="auto", help="a FAISS factory string, or auto (default)")
    g.add_argument("--shards", type=int, default=1, help="serving shards (default 1)")
    g.add_argument(
        "--memory-budget", default="4GB", help="RAM the served index may take (default 4GB)"
    )
    g.add_argument(
        "--compress",
        choices=("auto", "none", "sq8", "pq", "binary"),
        default="auto",
        help="codes held in RAM: full vectors (none), SQ8, 4-bit PQ or binary (sign bits, "
        "d/8 bytes); auto (default): the least compressed that fits --memory-budget",
    )
    g.add_argument(
        "--store-vectors",
        choices=("auto", "float32", "float16", "int8"),
        default="auto",
        help="precision of the vectors kept on disk (rescoring, include vector, updates); "
        "auto (default): int8 beside compressed codes, else float32",
    )
    g.add_argument(
        "--rescore",
        default="auto",
        help="compressed codes: candidates per hit rescored exactly from the stored vectors, "
        "tuned up from this to the target recall (0: none; auto: 4)",
    )
    g.add_argument(
        "--target-recall", type=float, default=0.95, help="recall@10 to tune for (default 0.95)"
    )
    g.add_argument(
        "--strict-recall",
        action="store_true",
        help="fail instead of warning when the target is missed",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of the training sample (default 0)")
    g.add_argument(
        "--lexical",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a BM25 index of the text beside the vectors, for lexical and hybrid search "
        "(default on when the embedding set holds text)",
    )
    g.add_argument(
        "--lexical-language",
        default="english",
        help="the lexical index's analysis: a Snowball language (stemming, and stop words "
        "where bm25s has a list), or none for raw lower-cased tokens (default english)",
    )


def add_index_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `embedlib index` and `jobs/build_index.py`."""
    p.add_argument(
        "embeddings", nargs="*", help="embedding sets, Parquet files of id + vector, or a .npy"
    )
    p.add_argument("out", help="index root (holds the versions and the CURRENT pointer)")
    g = p.add_argument_group("index")
    g.add_argument(
        "--retrain",
        action="store_true",
        help="`embedlib index --retrain INDEX`: rebuild INDEX from the documents it holds, "
        "with a freshly trained quantizer (keeps its factory and shards unless given)",
    )
    g.add_argument(
        "--metric",
        dest="index_metric",
        choices=METRICS,
        help="default: the embedding set's, else cosine",
    )
    _add_plan_options(g)
    g = p.add_argument_group("user vectors")
    g.add_argument(
        "--id-column",
        dest="vector_id_column",
        default="id",
        help="id column of Parquet inputs (default id)",
    )
    g.add_argument(
        "--vector-column", default="vector", help="vector column of Parquet inputs (default vector)"
    )
    g.add_argument(
        "--ids", help="for a .npy input: a text file with one id per row (default: row numbers)"
    )
    add_run_arguments(p)


def index_options(args: argparse.Namespace) -> IndexOptions:
    from embedlib.index.build.driver import IndexOptions
    from embedlib.index.build.plan import parse_bytes

    return IndexOptions(
        factory=args.factory,
        compress=args.compress,
        store_vectors=args.store_vectors,
        rescore=args.rescore if args.rescore == "auto" else _count(args.rescore, "--rescore"),
        metric=getattr(args, "index_metric", None),
        shards=args.shards,
        memory_budget=parse_bytes(args.memory_budget),
        target_recall=args.target_recall,
        strict_recall=args.strict_recall,
        seed=args.seed,
        lexical=args.lexical,
        lexical_language=args.lexical_language,
        id_column=getattr(args, "vector_id_column", "id"),
        vector_column=getattr(args, "vector_column", "vector"),
        ids=getattr(args, "ids", None),
    )


def _count(text: str, flag: str) -> int:
    if not text.isdigit():
        raise SystemExit(f"{flag} takes auto or a whole number >= 0, got {text!r}")
    return int(text)


def add_update_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `embedlib update` and `jobs/update_index.py`."""
    p.add_argument("index", help="index root (updates the version CURRENT names)")
    p.add_argument(
        "source",
        nargs="?",
        help="the new corpus (ids it lacks are deleted), or with --delta the rows to upsert",
    )
    p.add_argument("--delta", action="store_true", help="SOURCE holds only rows to upsert")
    p.add_argument("--delete-ids", help="a file of ids to delete, one per line")
    p.add_argument("--text-column", help="default: the index's")
    p.add_argument("--id-column", default="id", help="column holding ids (default: id)")
    p.add_argument("--model", help="refused unless it is the index's model")
    p.add_argument("--format", choices=FORMATS, help="read every file as this format")
    p.add_argument(
        "--wait", type=float, default=0.0, help="seconds to wait for another update's lock"
    )
    add_run_arguments(p)


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `embedlib serve` and `jobs/serve_index.py`."""
    p.add_argument(
        "index",
        nargs="+",
        help="index root (serves the version CURRENT names), or several as NAME=PATH: named "
        "collections behind one server (a bare path is named after its folder)",
    )
    p.add_argument(
        "--default", help="the collection the un-prefixed routes address (default: the first)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument(
        "--replicas", type=int, default=1, help="replicas of each shard searcher (default 1)"
    )
    add_placement_arguments(p)
    p.add_argument(
        "--address", help="Ray cluster address (default: a running cluster, else a local one)"
    )
    p.add_argument(
        "--detach",
        action="store_true",
        help="return once the app is ready; it keeps running on the cluster",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds before a request gets a 504 (default 30)",
    )
    p.add_argument(
        "--watch",
        action="store_true",
        help="follow CURRENT: serve each new index version without downtime",
    )
    p.add_argument(
        "--dashboard",
        action="store_true",
        help="start Ray's dashboard with the local Ray instance (`serve status`, the job API; "
        "about 1 GB resident in its processes)",
    )
    p.add_argument(
        "--recommender",
        help="a folder `embedlib recommend train` wrote (INDEX is its index/): also answer "
        "POST /v1/recommend",
    )


def add_pipeline_arguments(p: argparse.ArgumentParser) -> None:
    """`embedlib pipeline`: the options of embed, plus those of index and serve."""
    add_embed_arguments(p)
    _add_plan_options(p.add_argument_group("index"))
    g = p.add_argument_group("serve")
    g.add_argument("--no-serve", action="store_true", help="stop after the index is published")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    g.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    g.add_argument(
        "--replicas", type=int, default=1, help="replicas of each shard searcher (default 1)"
    )
    add_placement_arguments(g)


def add_placement_arguments(p: Any) -> None:
    """--placement and --ingress, shared by serve and pipeline."""
    p.add_argument(
        "--placement", choices=("gateway", "grouped", "per-shard"), default="gateway",
        help="gateway (default): the gateway replicas search every shard, one hop per query; "
        "grouped: one searcher deployment behind one gateway on the head node (a lost worker "
        "node drops no request); per-shard: a deployment per shard (shards on different nodes)",
    )  # fmt: skip
    p.add_argument(
        "--ingress", choices=("haproxy", "proxy"), default="haproxy",
        help="haproxy (default): Ray Serve's HAProxy, throughput-optimized mode; proxy: "
        "Serve's Python HTTP proxy. Applies when this command starts Ray",
    )  # fmt: skip
