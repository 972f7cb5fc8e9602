"""`embedlib` sub-commands for the other uses of embeddings: static word vectors
(import, train, analogies), clusters and maps, recommendations, fine-tuning."""

from __future__ import annotations

import argparse
import os
from typing import Any

import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from embedlib.cli.args import add_run_arguments, run_options
from embedlib.embed.corpus.discover import FORMATS as CORPUS_FORMATS
from embedlib.exceptions import EmbedlibError
from embedlib.models.fingerprint import DEFAULT_MODEL
from embedlib.options import (
    DEMO_PAIRS,
    PACKAGED_GLOVE,
    PROJECTIONS,
    SHAPE_PAIRS,
    VECTOR_FORMATS,
)

METRIC_CHOICES = ("cosine", "dot", "l2")


def add_use_commands(sub: Any) -> None:
    """Register the sub-commands of this module on the `embedlib` parser."""
    p = sub.add_parser(
        "import-vectors",
        help="word2vec / GloVe vectors (or the packaged glove-6b-50d) as an embedding set",
    )
    add_import_vectors_arguments(p)
    p.set_defaults(func=cmd_import_vectors)
    p = sub.add_parser(
        "train-word2vec", help="train word2vec (gensim) on a corpus into an embedding set"
    )
    add_train_word2vec_arguments(p)
    p.set_defaults(func=cmd_train_word2vec)
    p = sub.add_parser("eval", help="evaluate vectors: analogies")
    tasks = p.add_subparsers(dest="task", required=True)
    q = tasks.add_parser(
        "analogies", help="accuracy on word2vec-format analogy questions (a b c d per line)"
    )
    q.add_argument("file", help="questions file (e.g. gensim's questions-words.txt)")
    q.add_argument("--index", required=True, help="the index (root path) of the word vectors")
    q.add_argument("--url", help="also ask the same index served at this URL")
    q.add_argument("--api-key", help="API key for --url (default: EMBEDLIB_API_KEY)")
    q.add_argument(
        "--case-sensitive", action="store_true", help="keep the questions' case (default: lower)"
    )
    q.add_argument("--no-exact", action="store_true", help="skip the exact-search column")
    q.set_defaults(func=cmd_eval_analogies)
    p = sub.add_parser("cluster", help="k-means over an embedding set (a Ray job)")
    add_cluster_arguments(p)
    add_run_arguments(p)
    p.set_defaults(func=cmd_cluster)
    p = sub.add_parser(
        "map", help="2-D map (PNG + interactive HTML) of an embedding set, coloured by cluster"
    )
    add_map_arguments(p)
    add_run_arguments(p)
    p.set_defaults(func=cmd_map)
    p = sub.add_parser("recommend", help="recommendations from interactions: train, query")
    add_recommend_commands(p)
    p = sub.add_parser(
        "finetune",
        help="contrastive fine-tuning (in-batch negatives) on (anchor, positive) text pairs "
        "or, with --image-column, on image-caption pairs (CLIP-style models)",
    )
    add_finetune_arguments(p)
    p.set_defaults(func=cmd_finetune)


# -- static word vectors -------------------------------------------------------------------


def add_import_vectors_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `embedlib import-vectors` and `jobs/import_vectors.py`."""

    p.add_argument("source", help=f"a word2vec or GloVe file (any fsspec URL), or {PACKAGED_GLOVE}")
    p.add_argument("out", help="the embedding set to write (the word is the id)")
    p.add_argument(
        "--format", choices=VECTOR_FORMATS, default="auto", help="file format (default: detect)"
    )
    p.add_argument("--limit", type=int, help="only the first N words (files list frequent first)")
    p.add_argument(
        "--metric", choices=METRIC_CHOICES, default="cosine", help="metric hint for the index"
    )


def cmd_import_vectors(args: argparse.Namespace) -> int:
    from embedlib.uses.word_vectors import import_word_vectors

    manifest = import_word_vectors(
        args.source, args.out, format=args.format, limit=args.limit, metric=args.metric
    )
    print(
        f"embedding set: {args.out}\n  {manifest.documents} words, dimension "
        f"{manifest.dim}, {manifest.source['format']} vectors from {args.source}"
    )
    return 0


def add_train_word2vec_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `embedlib train-word2vec` and `jobs/train_word2vec.py`."""
    p.add_argument("source", help="corpus: a file, folder or glob on any fsspec URL")
    p.add_argument("out", help="the embedding set to write (the word is the id), with the model")
    p.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    p.add_argument("--format", choices=CORPUS_FORMATS, help="read every file as this format")
    p.add_argument("--cbow", action="store_true", help="CBOW instead of skip-gram")
    p.add_argument("--dim", type=int, default=100, help="vector dimension (default 100)")
    p.add_argument("--window", type=int, default=5, help="context window (default 5)")
    p.add_argument("--min-count", type=int, default=5, help="ignore rarer words (default 5)")
    p.add_argument("--epochs", type=int, default=5, help="passes over the corpus (default 5)")
    p.add_argument("--negative", type=int, default=5, help="negative samples (default 5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--workers", type=int, help="training threads (default: CPUs; 1 is reproducible)"
    )


def cmd_train_word2vec(args: argparse.Namespace) -> int:
    from embedlib.uses.word2vec import train_word2vec

    report = train_word2vec(
        args.source, args.out, text_column=args.text_column, format=args.format,
        skip_gram=not args.cbow, dim=args.dim, window=args.window, min_count=args.min_count,
        epochs=args.epochs, negative=args.negative, seed=args.seed, workers=args.workers,
    )  # fmt: skip
    print(report)
    return 0


def cmd_eval_analogies(args: argparse.Namespace) -> int:
    from embedlib.uses.word_vectors import evaluate_analogies, read_analogies

    questions = read_analogies(args.file, lowercase=not args.case_sensitive)
    report = evaluate_analogies(
        questions,
        args.index,
        url=args.url,
        exact=not args.no_exact,
        api_key=args.api_key or os.environ.get("EMBEDLIB_API_KEY") or None,
    )
    print(report)
    return 0


# -- clusters and maps ---------------------------------------------------------------------


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `embedlib cluster` and `jobs/cluster_vectors.py`."""
    p.add_argument("input", help="an embedding set, or Parquet with id and vector columns")
    p.add_argument("out", help="the clustered embedding set to write (with a cluster column)")
    p.add_argument("--k", type=int, required=True, help="number of clusters")
    p.add_argument("--metric", choices=METRIC_CHOICES, help="default: the set's, else cosine")
    p.add_argument(
        "--sample", type=int, default=100_000, help="train on at most N vectors (default 100000)"
    )
    p.add_argument("--niter", type=int, default=20, help="k-means iterations (default 20)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--nearest", type=int, default=5, help="documents listed per cluster (default 5)"
    )


def cmd_cluster(args: argparse.Namespace) -> int:
    from embedlib.uses.clustering import cluster_vectors

    report = cluster_vectors(
        args.input, args.out, k=args.k, metric=args.metric, sample=args.sample,
        niter=args.niter, seed=args.seed, nearest=args.nearest, run=run_options(args),
    )  # fmt: skip
    print(report)
    return 0


def add_map_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `embedlib map` and `jobs/draw_map.py`."""

    p.add_argument("input", help="an embedding set, or Parquet with id and vector columns")
    p.add_argument("out", help="folder for map.png, map.html, points.parquet (and clustered/)")
    p.add_argument(
        "--k", type=int, help="clusters, when the input has no cluster column (default: up to 12)"
    )
    p.add_argument(
        "--projection", choices=PROJECTIONS, default="pca", help="2-D projection (default pca)"
    )
    p.add_argument(
        "--max-points", type=int, default=20_000, help="points drawn at most (default 20000)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--title", help="the plot's title")


def cmd_map(args: argparse.Namespace) -> int:
    from embedlib.uses.maps import draw_map

    report = draw_map(
        args.input, args.out, k=args.k, projection=args.projection,
        max_points=args.max_points, seed=args.seed, title=args.title, run=run_options(args),
    )  # fmt: skip
    print(report)
    return 0


# -- recommendations -----------------------------------------------------------------------


def add_recommend_commands(p: argparse.ArgumentParser) -> None:
    tasks = p.add_subparsers(dest="task", required=True)
    t = tasks.add_parser("train", help="learn user/item embeddings, report recall@k, index items")
    add_recommend_train_arguments(t)
    add_run_arguments(t)
    t.set_defaults(func=cmd_recommend_train)
    q = tasks.add_parser("query", help="items for a user (from the files, or a served app)")
    q.add_argument("recommender", help="the folder `embedlib recommend train` wrote")
    q.add_argument("--user", required=True, help="the user id")
    q.add_argument("-k", type=int, default=10, help="how many items (default 10)")
    q.add_argument("--url", help="ask the app serving it instead (embedlib serve --recommender)")
    q.add_argument("--api-key", help="API key for --url (default: EMBEDLIB_API_KEY)")
    q.set_defaults(func=cmd_recommend_query)
    e = tasks.add_parser(
        "example-data", help="write synthetic interactions from planted factors (seeded)"
    )
    e.add_argument("out", help="a .parquet or .csv file to write")
    e.add_argument("--users", type=int, default=600)
    e.add_argument("--items", type=int, default=400)
    e.add_argument("--per-user", type=int, default=30, help="items per user (default 30)")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=cmd_recommend_example)


def add_recommend_train_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `embedlib recommend train` and `jobs/train_recommender.py`."""
    p.add_argument("interactions", help="Parquet or CSV with user, item (and rating or count)")
    p.add_argument("out", help="folder to write the recommender to")
    p.add_argument("--user-column", default="user")
    p.add_argument("--item-column", default="item")
    p.add_argument(
        "--weight-column", help="rating or count column (default: rating/count/weight, else 1)"
    )
    p.add_argument("--factors", type=int, default=32, help="embedding dimension (default 32)")
    p.add_argument("--iterations", type=int, default=15, help="ALS iterations (default 15)")
    p.add_argument("--regularization", type=float, default=0.05)
    p.add_argument("--alpha", type=float, default=10.0, help="confidence per unit of weight")
    p.add_argument(
        "--test-fraction", type=float, default=0.2, help="held out per user (default 0.2)"
    )
    p.add_argument("-k", type=int, default=10, help="k of the held-out recall@k (default 10)")
    p.add_argument("--seed", type=int, default=0)


def cmd_recommend_train(args: argparse.Namespace) -> int:
    from embedlib.uses.recommend import train_recommender

    report = train_recommender(
        args.interactions, args.out, user_column=args.user_column,
        item_column=args.item_column, weight_column=args.weight_column, factors=args.factors,
        iterations=args.iterations, regularization=args.regularization, alpha=args.alpha,
        test_fraction=args.test_fraction, k=args.k, seed=args.seed, run=run_options(args),
    )  # fmt: skip
    print(report)
    print(f"  serve it: embedlib serve {args.out}/index --recommender {args.out}")
    return 0


def cmd_recommend_query(args: argparse.Namespace) -> int:
    from embedlib.client import Client
    from embedlib.uses.recommend import Recommender

    if args.url:
        key = args.api_key or os.environ.get("EMBEDLIB_API_KEY")
        answer = Client(args.url, api_key=key).recommend(args.user, k=args.k)
    else:
        answer = Recommender(args.recommender).recommend(args.user, k=args.k)
    if answer.get("fallback"):
        print(f"({answer['reason']})")
    for n, r in enumerate(answer["results"], 1):
        print(f"{n:>3}  {r['score']:>9.4f}  {r['id']}")
    return 0


def cmd_recommend_example(args: argparse.Namespace) -> int:
    from embedlib.uses.recommend import planted_interactions

    table, _, _ = planted_interactions(
        users=args.users, items=args.items, per_user=args.per_user, seed=args.seed
    )
    if args.out.endswith(".csv"):
        pcsv.write_csv(table, args.out)
    else:
        pq.write_table(table, args.out)
    print(
        f"{table.num_rows} interactions of {args.users} users with {args.items} items: {args.out}"
    )
    return 0


# -- fine-tuning ---------------------------------------------------------------------------


def add_finetune_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `embedlib finetune` and `jobs/finetune.py`."""

    p.add_argument(
        "pairs",
        help=f"Parquet, JSON Lines or CSV with anchor and positive columns; {DEMO_PAIRS!r} "
        "(pairs from the standard library's docstrings: summary -> the rest); Parquet with "
        f"image and caption columns (with --image-column); or {SHAPE_PAIRS!r} (drawn shapes "
        "and their captions, some combinations held out, and a tiny CLIP to train on them)",
    )
    p.add_argument("out", help="folder to save the fine-tuned model to")
    p.add_argument(
        "--model",
        default=None,
        help=f"base model (default: {DEFAULT_MODEL}; for image-caption pairs a CLIP-style "
        f"folder; for {SHAPE_PAIRS!r} a tiny CLIP made from --seed)",
    )
    p.add_argument("--anchor-column", default="anchor")
    p.add_argument("--positive-column", default="positive")
    p.add_argument(
        "--eval-pairs", type=int, default=None, help="held out (default 200; 40 for images)"
    )
    p.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    p.add_argument(
        "--batch-size", type=int, default=None, help="pairs per batch (default 32; 64 for images)"
    )
    p.add_argument(
        "--learning-rate", type=float, default=None,
        help=f"default 5e-5 (5e-4 for {SHAPE_PAIRS!r}, whose tiny CLIP starts from random weights)",
    )  # fmt: skip
    p.add_argument("--max-seq-length", type=int, default=128, help="tokens per text (default 128)")
    p.add_argument("--seed", type=int, default=0)
    images = p.add_argument_group("image-caption pairs (CLIP-style models)")
    images.add_argument(
        "--image-column", default=None,
        help="the column of image bytes or paths (relative to the table): trains image-text",
    )  # fmt: skip
    images.add_argument("--caption-column", default="caption")
    images.add_argument("--freeze-text", action="store_true", help="train the image tower only")
    images.add_argument(
        "--new-image-tower", action="store_true",
        help="--model is a text model: train a new, small ViT image tower into its space "
        "(with --freeze-text the text vectors stay the model's own)",
    )  # fmt: skip
    images.add_argument(
        "--image-size", type=int, default=None,
        help=f"pixels of the new image tower's input (default 224; 64 for {SHAPE_PAIRS!r})",
    )  # fmt: skip
    images.add_argument(
        "--temperature", type=float, default=None,
        help="a fixed softmax temperature (default: learned, CLIP's logit scale)",
    )  # fmt: skip
    images.add_argument(
        "--workers", type=int, default=0,
        help="Ray Train workers, data-parallel (default 0: this process)",
    )  # fmt: skip
    images.add_argument("--cpus-per-worker", type=float, default=1.0)
    images.add_argument("--gpus-per-worker", type=float, default=0.0)


def cmd_finetune(args: argparse.Namespace) -> int:
    if args.image_column or args.pairs == SHAPE_PAIRS:
        return _finetune_image_text(args)
    from embedlib.uses.finetune import finetune

    report = finetune(
        args.pairs, args.out, model=args.model or "default", anchor_column=args.anchor_column,
        positive_column=args.positive_column, eval_pairs=args.eval_pairs or 200,
        steps=args.steps, batch_size=args.batch_size or 32,
        learning_rate=args.learning_rate or 5e-5, max_seq_length=args.max_seq_length,
        seed=args.seed,
    )  # fmt: skip
    print(report)
    return 0


def _finetune_image_text(args: argparse.Namespace) -> int:
    from embedlib.uses.image_text import finetune_image_text, train_shapes

    options = {
        "steps": args.steps, "batch_size": args.batch_size or 64, "seed": args.seed,
        "temperature": args.temperature, "freeze_text": args.freeze_text,
        "workers": args.workers, "cpus_per_worker": args.cpus_per_worker,
        "gpus_per_worker": args.gpus_per_worker, "new_image_tower": args.new_image_tower,
    }  # fmt: skip
    if args.pairs == SHAPE_PAIRS:
        report = train_shapes(
            args.out, model=args.model, learning_rate=args.learning_rate or 5e-4,
            image_size=args.image_size or 64, **options,
        )  # fmt: skip
    else:
        if args.model is None:
            raise EmbedlibError(
                "training on image-caption pairs needs a CLIP-style base model: "
                "--model CLIP_FOLDER (e.g. sentence-transformers' clip-ViT-B-32)"
            )
        report = finetune_image_text(
            args.pairs, args.out, model=args.model, image_column=args.image_column,
            caption_column=args.caption_column, eval_pairs=args.eval_pairs or 40,
            learning_rate=args.learning_rate or 5e-5, image_size=args.image_size or 224,
            **options,
        )  # fmt: skip
    print(report)
    return 0
