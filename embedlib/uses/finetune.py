"""Contrastive fine-tuning of a sentence-transformers model on (anchor, positive) pairs
with in-batch negatives (MultipleNegativesRankingLoss, i.e. InfoNCE), evaluated before
and after on held-out pairs, saved as a model folder `embedlib embed --model` accepts.

The fine-tuned model has other weights, hence another fingerprint: an embedding set or
index built with the base model refuses it until rebuilt.
"""

from __future__ import annotations

import posixpath
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from embedlib.embed.stdlib_docs import docstring_pairs
from embedlib.exceptions import EmbedlibError, SourceError
from embedlib.extras import optional_import
from embedlib.models.fingerprint import load_model
from embedlib.options import DEMO_PAIRS


@dataclass(frozen=True)
class RetrievalScores:
    """Each held-out anchor ranks every held-out positive; its own is the answer."""

    recall_at_1: float
    recall_at_10: float
    mrr_at_10: float

    def __str__(self) -> str:
        return (
            f"recall@1 {self.recall_at_1:.3f}, recall@10 {self.recall_at_10:.3f}, "
            f"MRR@10 {self.mrr_at_10:.3f}"
        )


@dataclass
class FinetuneReport:
    output: str
    base_model: str
    train_pairs: int
    eval_pairs: int
    steps: int
    before: RetrievalScores
    after: RetrievalScores
    seconds: float

    def __str__(self) -> str:
        return (
            f"fine-tuned model: {self.output} (from {self.base_model})\n"
            f"  {self.steps} steps on {self.train_pairs} pairs in {self.seconds:.0f}s; "
            f"{self.eval_pairs} held-out pairs:\n"
            f"  before: {self.before}\n"
            f"  after:  {self.after}\n"
            f"  embed with it: embedlib embed CORPUS OUT --model {self.output}"
        )


def read_pair_table(
    source: str, *, storage_options: dict[str, Any] | None = None
) -> tuple[pa.Table, fsspec.AbstractFileSystem, str]:
    """A table of pairs from Parquet, JSON Lines or CSV (by extension), with the
    filesystem and path it was read from."""
    fs, path = url_to_fs(source, **(storage_options or {}))
    if not fs.exists(path):
        raise SourceError(f"{source!r} does not exist")
    with fs.open(path, "rb") as fh:
        if path.endswith((".jsonl", ".json")):
            table = pjson.read_json(fh)
        elif path.endswith((".csv", ".tsv")):
            delimiter = "\t" if path.endswith(".tsv") else ","
            table = pcsv.read_csv(fh, parse_options=pcsv.ParseOptions(delimiter=delimiter))
        else:
            table = pq.read_table(fh)
    return table, fs, path


def require_columns(table: pa.Table, source: str, columns: dict[str, str]) -> None:
    """SourceError unless `table` holds each of `columns` (column -> the option naming it)."""
    for column, option in columns.items():
        if column not in table.column_names:
            raise SourceError(
                f"{source!r} has no column {column!r}; its columns are "
                f"{', '.join(map(repr, table.column_names))}. Name it with {option}."
            )


def read_pairs(
    source: str,
    *,
    anchor_column: str = "anchor",
    positive_column: str = "positive",
    storage_options: dict[str, Any] | None = None,
) -> tuple[list[str], list[str]]:
    """Anchors and positives from Parquet, JSON Lines or CSV, or `demo` for the
    standard library's docstring pairs. Rows with an empty side are dropped."""
    if source == DEMO_PAIRS:
        table = docstring_pairs()
    else:
        table, _, _ = read_pair_table(source, storage_options=storage_options)
    require_columns(
        table, source, {anchor_column: "--anchor-column", positive_column: "--positive-column"}
    )
    anchors = table.column(anchor_column).cast(pa.string()).to_pylist()
    positives = table.column(positive_column).cast(pa.string()).to_pylist()
    kept = [(a, p) for a, p in zip(anchors, positives, strict=True) if a and p]
    return [a for a, _ in kept], [p for _, p in kept]


def retrieval_scores(model: Any, anchors: list[str], positives: list[str]) -> RetrievalScores:
    """Rank all `positives` for each anchor by cosine; the pair's own positive is right."""
    a = model.encode(anchors, normalize_embeddings=True, convert_to_numpy=True, batch_size=64)
    p = model.encode(positives, normalize_embeddings=True, convert_to_numpy=True, batch_size=64)
    scores = a @ p.T
    right = scores[np.arange(len(anchors)), np.arange(len(anchors))]
    rank = (scores > right[:, None]).sum(axis=1)  # 0 = first
    return RetrievalScores(
        float((rank < 1).mean()),
        float((rank < 10).mean()),
        float(np.where(rank < 10, 1.0 / (rank + 1), 0.0).mean()),
    )


def finetune(
    pairs: str,
    out: str,
    *,
    model: str = "default",
    anchor_column: str = "anchor",
    positive_column: str = "positive",
    eval_pairs: int = 200,
    steps: int = 300,
    batch_size: int = 32,
    learning_rate: float = 5e-5,
    max_seq_length: int = 128,
    seed: int = 0,
) -> FinetuneReport:
    """Fine-tune `model` on the pairs at `pairs` for `steps` optimizer steps (batches of
    `batch_size` pairs, the other positives of a batch are the negatives), evaluate on
    `eval_pairs` held-out pairs before and after, and save the model at `out`."""
    what = "embedlib finetune"
    datasets = optional_import("datasets", "train", what=what)
    optional_import("accelerate", "train", what=what)  # the trainer's
    import torch
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    fs, path = url_to_fs(out)
    if fs.exists(posixpath.join(path, "modules.json")):
        raise EmbedlibError(f"{out!r} already holds a model; save the fine-tuned one elsewhere")
    start = time.perf_counter()
    anchors, positives = read_pairs(pairs, anchor_column=anchor_column,
                                    positive_column=positive_column)  # fmt: skip
    if len(anchors) < eval_pairs + 2 * batch_size:
        raise SourceError(
            f"{len(anchors)} pairs in {pairs!r}: fine-tuning needs more than {eval_pairs} "
            f"held-out pairs plus two batches of {batch_size}; give more pairs or lower "
            "--eval-pairs / --batch-size"
        )
    order = np.random.default_rng(seed).permutation(len(anchors))
    held, train = order[:eval_pairs], order[eval_pairs:]
    eval_a, eval_p = [anchors[i] for i in held], [positives[i] for i in held]
    torch.manual_seed(seed)
    st = load_model(model, max_seq_length=max_seq_length)
    before = retrieval_scores(st, eval_a, eval_p)
    dataset = datasets.Dataset.from_dict(
        {"anchor": [anchors[i] for i in train], "positive": [positives[i] for i in train]}
    )
    with tempfile.TemporaryDirectory(prefix="embedlib-finetune-") as tmp:
        args = SentenceTransformerTrainingArguments(
            output_dir=tmp, max_steps=steps, per_device_train_batch_size=batch_size,
            learning_rate=learning_rate, warmup_steps=max(1, steps // 10), seed=seed,
            batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="no", report_to="none",
            logging_strategy="no", use_cpu=True, dataloader_drop_last=True,
        )  # fmt: skip
        trainer = SentenceTransformerTrainer(
            model=st, args=args, train_dataset=dataset,
            loss=MultipleNegativesRankingLoss(st),
        )  # fmt: skip
        trainer.train()
    after = retrieval_scores(st, eval_a, eval_p)
    st.save(path)
    return FinetuneReport(
        out, model, len(train), len(held), steps, before, after, time.perf_counter() - start
    )
