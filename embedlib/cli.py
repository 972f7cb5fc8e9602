"""The `embedlib` command. Each sub-command parses its options and calls the library."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from embedlib.cli_uses import add_use_commands
from embedlib.corpus.discover import FORMATS
from embedlib.encode import BACKENDS
from embedlib.exceptions import EmbedlibError
from embedlib.index.build import IndexOptions
from embedlib.index.plan import parse_bytes
from embedlib.models import DEFAULT_MODEL
from embedlib.options import METRICS, EmbedOptions, RunOptions


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
    g.add_argument("--local", action="store_true", help="run in this process, without Ray")
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
        "--id-column", help="column holding ids (default: 'id' when present, else path:row)"
    )
    g.add_argument("--columns", help="comma-separated passthrough columns to keep (default: all)")
    g.add_argument(
        "--format", choices=FORMATS, help="read every file as this format (default: by extension)"
    )
    g.add_argument("--shard-rows", type=int, default=1_000, help="rows per shard (default 1000)")
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
        id_column=args.id_column,
        columns=tuple(c.strip() for c in args.columns.split(",") if c.strip())
        if args.columns
        else None,
        normalize=not args.no_normalize,
        max_seq_length=args.max_seq_length,
        dtype=args.dtype,
        metric=args.metric,
        shard_rows=args.shard_rows,
        format=args.format,
        on_duplicate=args.on_duplicate,
        backend=args.backend,
    )


def run_options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(
        runner="local" if args.local else "ray",
        address=args.address,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        batch_size=getattr(args, "batch_size", 64),
        overwrite=getattr(args, "overwrite", False),
        progress=not args.no_progress,
        storage_options=dict(args.storage_option),
    )


def cmd_embed(args: argparse.Namespace) -> int:
    from embedlib.embed_job import embed_corpus

    report = embed_corpus(args.source, args.out, options=embed_options(args), run=run_options(args))
    print(report)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from embedlib.demo import run_demo, show_served

    run_demo(args.out, run=run_options(args))
    if args.no_serve:
        return 0
    from embedlib.serve.app import serve_index

    serve_index(
        str(Path(args.out) / "index"), host="127.0.0.1", port=args.port, after_ready=show_served
    )
    return 0


def _add_plan_options(g: argparse._ArgumentGroup) -> None:
    """Index options shared by `index` and `pipeline`."""
    g.add_argument("--factory", default="auto", help="a FAISS factory string, or auto (default)")
    g.add_argument("--shards", type=int, default=1, help="serving shards (default 1)")
    g.add_argument(
        "--memory-budget", default="4GB", help="RAM the served index may take (default 4GB)"
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
    return IndexOptions(
        factory=args.factory,
        metric=getattr(args, "index_metric", None),
        shards=args.shards,
        memory_budget=parse_bytes(args.memory_budget),
        target_recall=args.target_recall,
        strict_recall=args.strict_recall,
        seed=args.seed,
        id_column=getattr(args, "vector_id_column", "id"),
        vector_column=getattr(args, "vector_column", "vector"),
        ids=getattr(args, "ids", None),
    )


def cmd_index(args: argparse.Namespace) -> int:
    from embedlib.index.build import build_index

    def echo(line: str) -> None:
        print(line, flush=True)

    if args.retrain:
        from embedlib.index.update import retrain_index

        if args.embeddings:
            raise EmbedlibError("--retrain takes the index only: embedlib index --retrain INDEX")
        given = args.factory != "auto" or args.shards != 1 or args.index_metric is not None
        options = index_options(args) if given else None
        report = retrain_index(args.out, options=options, run=run_options(args), echo=echo)
        print(report)
        return 0
    if not args.embeddings:
        raise EmbedlibError("give the embedding sets to index: embedlib index EMBEDDINGS... OUT")
    report = build_index(
        args.embeddings, args.out, options=index_options(args), run=run_options(args), echo=echo
    )
    print(report)
    return 0


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


def cmd_update(args: argparse.Namespace) -> int:
    from embedlib.index.update import update_index

    if args.source is None and not args.delete_ids:
        raise EmbedlibError("give a SOURCE to update from, --delete-ids FILE, or both")
    deletes: list[str] = []
    if args.delete_ids:
        with open(args.delete_ids, encoding="utf-8") as fh:
            deletes = [line.strip() for line in fh if line.strip()]
    report = update_index(
        args.index, args.source, delta=args.delta, delete_ids=deletes,
        text_column=args.text_column, id_column=args.id_column, model=args.model,
        format=args.format, wait_s=args.wait, run=run_options(args),
    )  # fmt: skip
    print(report)
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from embedlib.index.update import gc_versions

    removed = gc_versions(args.index, keep=args.keep)
    print(f"removed: {', '.join(removed) if removed else 'nothing'}")
    return 0


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `embedlib serve` and `jobs/serve_index.py`."""
    p.add_argument("index", help="index root (serves the version CURRENT names)")
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
        "--recommender",
        help="a folder `embedlib recommend train` wrote (INDEX is its index/): also answer "
        "POST /v1/recommend",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from embedlib.serve.app import serve_index

    serve_index(
        args.index,
        host=args.host,
        port=args.port,
        address=args.address,
        detach=args.detach,
        watch=args.watch,
        replicas=args.replicas,
        placement=args.placement,
        ingress=args.ingress,
        api_key=os.environ.get("EMBEDLIB_API_KEY") or None,
        request_timeout_s=args.timeout,
        recommender=args.recommender,
    )
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    import os

    from embedlib.client import Client

    client = Client(args.url, api_key=args.api_key or os.environ.get("EMBEDLIB_API_KEY"))
    results = client.search(args.text, k=args.k)
    print(f"{'#':>3}  {'score':>7}  {'id':<30}  text")
    for n, r in enumerate(results, 1):
        text = " ".join(str(r.get("text", "")).split())
        print(f"{n:>3}  {r['score']:>7.4f}  {r['id']:<30.30}  {text[:90]}")
    return 0


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


def cmd_pipeline(args: argparse.Namespace) -> int:
    """embed -> index -> serve: OUT/embeddings, OUT/index, and the Serve app (left running)."""
    import os
    import posixpath

    from embedlib.embed_job import embed_corpus
    from embedlib.index.build import build_index

    embeddings, index = posixpath.join(args.out, "embeddings"), posixpath.join(args.out, "index")
    run = run_options(args)
    if not args.no_serve and run.runner == "ray":
        from embedlib.runner import ensure_ray
        from embedlib.serve.app import serve_env

        # Serve reads its ingress mode from the environment of Ray's processes: give it to
        # the Ray this job starts or joins before the embed step does so without it
        ensure_ray(args.address, runtime_env={"env_vars": serve_env(args.ingress)})
    print(embed_corpus(args.source, embeddings, options=embed_options(args), run=run), flush=True)
    options = index_options(args)
    print(
        build_index(
            embeddings, index, options=options, run=run, echo=lambda line: print(line, flush=True)
        ),
        flush=True,
    )
    if args.no_serve:
        return 0
    from embedlib.serve.app import serve_index

    serve_index(
        index,
        host=args.host,
        port=args.port,
        address=args.address,
        detach=True,
        replicas=args.replicas,
        placement=args.placement,
        ingress=args.ingress,
        api_key=os.environ.get("EMBEDLIB_API_KEY") or None,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedlib", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("embed", help="embed a corpus into an embedding set (a Ray job)")
    add_embed_arguments(p)
    p.set_defaults(func=cmd_embed)
    p = sub.add_parser("index", help="build a sharded FAISS index from embeddings (a Ray job)")
    add_index_arguments(p)
    p.set_defaults(func=cmd_index)
    p = sub.add_parser(
        "update", help="add, change and delete documents of an index: a new version (a Ray job)"
    )
    add_update_arguments(p)
    p.set_defaults(func=cmd_update)
    p = sub.add_parser("gc", help="remove old index versions (keeps CURRENT and the newest N)")
    p.add_argument("index", help="index root")
    p.add_argument("--keep", type=int, default=2, help="versions to keep (default 2)")
    p.set_defaults(func=cmd_gc)
    p = sub.add_parser(
        "serve", help="serve an index over HTTP with Ray Serve (API key: EMBEDLIB_API_KEY)"
    )
    add_serve_arguments(p)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser(
        "pipeline", help="embed -> index -> serve in one job (the app keeps running)"
    )
    add_pipeline_arguments(p)
    p.set_defaults(func=cmd_pipeline)
    p = sub.add_parser("query", help="search a served index and print a table")
    p.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    p.add_argument("text", help="the query text")
    p.add_argument("-k", type=int, default=10, help="how many results (default 10)")
    p.add_argument("--api-key", help="API key (default: EMBEDLIB_API_KEY)")
    p.set_defaults(func=cmd_query)
    p = sub.add_parser(
        "demo", help="embed the Python stdlib docs, index them, answer queries, serve the index"
    )
    p.add_argument(
        "--out", default="embedlib-demo", help="where the demo writes (default ./embedlib-demo)"
    )
    p.add_argument(
        "--no-serve", action="store_true", help="print the answers and exit instead of serving"
    )
    p.add_argument(
        "--port", type=int, default=8000, help="port to serve the demo index on (default 8000)"
    )
    add_run_arguments(p)
    p.set_defaults(func=cmd_demo)
    add_use_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from embedlib.runner import ray_connected, stop_ray

    connected_before = ray_connected()  # a caller's Ray (e.g. a test session) stays up
    try:
        return _run(argv)
    finally:
        if not connected_before:
            stop_ray()


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except EmbedlibError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: re-run the same command to resume from the committed shards",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
