"""The `embedlib` command. Each sub-command parses its options and calls the library;
the library is imported by the command that runs it, so `embedlib --help` stays fast and
a command whose extra is missing fails alone, naming the extra."""

from __future__ import annotations

import argparse
import logging
import os
import posixpath
import sys
from collections.abc import Sequence
from pathlib import Path

from embedlib.cli.args import (
    add_embed_arguments,
    add_index_arguments,
    add_pipeline_arguments,
    add_run_arguments,
    add_serve_arguments,
    add_update_arguments,
    embed_options,
    index_options,
    run_options,
)
from embedlib.cli.uses import add_use_commands
from embedlib.exceptions import EmbedlibError
from embedlib.options import MODES


def cmd_embed(args: argparse.Namespace) -> int:
    from embedlib.embed.job import embed_corpus

    report = embed_corpus(args.source, args.out, options=embed_options(args), run=run_options(args))
    print(report)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from embedlib.cli.demo import run_demo, show_served

    run_demo(args.out, run=run_options(args))
    if args.no_serve:
        return 0
    from embedlib.serve.run import serve_index

    serve_index(
        str(Path(args.out) / "index"), host="127.0.0.1", port=args.port, after_ready=show_served
    )
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from embedlib.index.build.driver import build_index
    from embedlib.index.update.retrain import retrain_index

    def echo(line: str) -> None:
        print(line, flush=True)

    if args.retrain:
        if args.embeddings:
            raise EmbedlibError("--retrain takes the index only: embedlib index --retrain INDEX")
        given = args.factory != "auto" or args.shards != 1 or args.index_metric is not None
        given = given or (args.compress, args.store_vectors, args.rescore) != ("auto",) * 3
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


def cmd_update(args: argparse.Namespace) -> int:
    from embedlib.index.update.upsert import update_index

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


def _seconds(text: str) -> float:
    """'90s', '30m', '1h', '2d', '0' -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        return float(number) * units[unit]
    except ValueError:
        raise SystemExit(
            f"--retain takes a duration such as 90s, 30m, 1h or 0; got {text!r}"
        ) from None


def cmd_gc(args: argparse.Namespace) -> int:
    from embedlib.index.update.gc import gc_versions

    removed = gc_versions(args.index, keep=args.keep, retain_s=_seconds(args.retain))
    print(f"removed: {', '.join(removed) if removed else 'nothing'}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from embedlib.serve.config import api_key_from_env, collection_specs, read_key_from_env
    from embedlib.serve.run import serve_index

    serve_index(
        collections=collection_specs(args.index, args.default),
        host=args.host,
        port=args.port,
        address=args.address,
        detach=args.detach,
        watch=args.watch,
        dashboard=args.dashboard,
        replicas=args.replicas,
        placement=args.placement,
        ingress=args.ingress,
        api_key=api_key_from_env(),
        read_key=read_key_from_env(),
        request_timeout_s=args.timeout,
        recommender=args.recommender,
    )
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from embedlib.client import Client

    client = Client(
        args.url,
        api_key=args.api_key or os.environ.get("EMBEDLIB_API_KEY"),
        collection=args.collection,
    )
    hits = client.search(args.text, k=args.k, mode=args.mode)
    print(f"{'#':>3}  {'score':>7}  {'id':<30}  text")
    for n, hit in enumerate(hits, 1):
        text = " ".join((hit.text or "").split())
        print(f"{n:>3}  {hit.score:>7.4f}  {hit.id:<30.30}  {text[:90]}")
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    """embed -> index -> serve: OUT/embeddings, OUT/index, and the Serve app (left running)."""
    from embedlib.distributed import ensure_ray
    from embedlib.embed.job import embed_corpus
    from embedlib.index.build.driver import build_index
    from embedlib.serve.config import api_key_from_env

    embeddings, index = posixpath.join(args.out, "embeddings"), posixpath.join(args.out, "index")
    run = run_options(args)
    if not args.no_serve and run.runner != "local":
        from embedlib.serve.run import serve_env

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
    from embedlib.serve.run import serve_index

    serve_index(
        index,
        host=args.host,
        port=args.port,
        address=args.address,
        detach=True,
        replicas=args.replicas,
        placement=args.placement,
        ingress=args.ingress,
        api_key=api_key_from_env(),
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
    p = sub.add_parser(
        "gc",
        help="remove old index versions nobody reads (keeps CURRENT, "
        "versions a server holds, the newest N and those younger than --retain)",
    )
    p.add_argument("index", help="index root")
    p.add_argument(
        "--keep",
        type=int,
        default=2,
        help="versions nobody holds to keep, newest first (default 2)",
    )
    p.add_argument(
        "--retain",
        default="1h",
        help="keep versions younger than this: 90s, 30m, 1h (default), 2d, 0",
    )
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
    p.add_argument("--collection", help="the collection to search (default: the server's default)")
    p.add_argument("--mode", choices=MODES, help="default: the server's")
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
    connected_before = _ray_connected()  # a caller's Ray (e.g. a test session) stays up
    try:
        return _run(argv)
    finally:
        if not connected_before and "ray" in sys.modules:  # a command that used Ray
            from embedlib.distributed import stop_ray

            stop_ray()


def _ray_connected() -> bool:
    """Whether this process already holds Ray (never imported: it does not)."""
    if "ray" not in sys.modules:
        return False
    from embedlib.distributed import ray_connected

    return ray_connected()


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
