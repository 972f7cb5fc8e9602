"""Contrastive fine-tuning on docstring pairs: held-out retrieval improves, the saved
model is one the embed job accepts, and its new fingerprint keeps it from being mixed
with vectors of the base model."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedlib import EmbedOptions, RunOptions, embed_corpus
from embedlib.exceptions import IncompatibleOutputError, ModelMismatchError, SourceError
from embedlib.index import build_index
from embedlib.uses.finetune import finetune, read_pairs

LOCAL = RunOptions(runner="local", progress=False)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "model"
    report = finetune("demo", str(out), steps=20, batch_size=16, max_seq_length=64)
    return out, report


@pytest.mark.slow  # training
def test_held_out_retrieval_improves(tuned):
    _, report = tuned
    assert report.eval_pairs == 200 and report.train_pairs > 500 and report.steps == 20
    assert report.after.mrr_at_10 > report.before.mrr_at_10
    assert report.after.recall_at_10 >= report.before.recall_at_10


@pytest.mark.slow  # training
def test_the_embed_job_takes_the_model_and_the_guard_refuses_mixing(tuned, tmp_path):
    model, _ = tuned
    (tmp_path / "c.jsonl").write_text(
        "".join(json.dumps({"id": i, "text": f"document number {i}"}) + "\n" for i in range(20))
    )
    base, new = str(tmp_path / "base"), str(tmp_path / "new")
    torch_only = {"backend": "torch"}
    embed_corpus(str(tmp_path / "c.jsonl"), base, options=EmbedOptions(**torch_only), run=LOCAL)
    tuned_options = EmbedOptions(model=str(model), **torch_only)
    report = embed_corpus(str(tmp_path / "c.jsonl"), new, options=tuned_options, run=LOCAL)
    assert report.documents == 20
    build_index(base, str(tmp_path / "idx"), run=LOCAL)
    with pytest.raises(ModelMismatchError):  # one index over vectors of both models
        build_index([base, new], str(tmp_path / "mixed"), run=LOCAL)
    with pytest.raises(IncompatibleOutputError, match="model: was"):  # resuming with it
        embed_corpus(str(tmp_path / "c.jsonl"), base, options=tuned_options, run=LOCAL)


def test_pairs_files_need_both_columns(tmp_path):
    pq.write_table(pa.table({"question": ["a"], "positive": ["b"]}), tmp_path / "p.parquet")
    with pytest.raises(SourceError, match=r"no column 'anchor'.*'question'.*--anchor-column"):
        read_pairs(str(tmp_path / "p.parquet"))
    anchors, positives = read_pairs(str(tmp_path / "p.parquet"), anchor_column="question")
    assert anchors == ["a"] and positives == ["b"]
    with pytest.raises(SourceError, match="held-out pairs"):
        finetune(str(tmp_path / "p.parquet"), str(tmp_path / "m"), anchor_column="question")
