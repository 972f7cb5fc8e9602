"""OpenVINO encoding: the model's transformer converted once to OpenVINO IR, in fp32 or
int8 (NNCF static quantization calibrated on built-in sentences), cached on disk, and run
with the model's own pooling and normalization done in NumPy.

Only `openvino` and `nncf` are used (no optimum-intel, which would pull torchvision and a
GPU torch build). Conversion needs torch once; encoding from the cache does not.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import numpy as np

from embedlib.cache import cache_root, private_dir
from embedlib.embed.stdlib_docs import stdlib_corpus
from embedlib.exceptions import ModelConversionError
from embedlib.models.fingerprint import (
    ModelFingerprint,
    fingerprint_of,
    load_model,
    resolve_model_path,
)

Precision = Literal["fp32", "int8"]
INT8_PRECISION = "int8-openvino"  # the fingerprint's precision for the quantized model
POOLING_MODES = ("mean", "cls", "max")
CALIBRATION_SENTENCES = 300
_FORMAT = 2  # bump when the cached layout or the conversion recipe changes


@dataclass(frozen=True)
class ConvertedModel:
    folder: Path  # model.xml, model.bin, tokenizer.json, meta.json
    source: str  # the sentence-transformers folder it was converted from
    pooling: str
    normalize_layer: bool
    max_seq_length: int
    pad_token: str
    pad_token_id: int
    fingerprint: ModelFingerprint  # of the source model, as the torch backend computes it


def _model_folder(model: str) -> Path:
    path = Path(resolve_model_path(model))
    if not (path / "modules.json").is_file():
        raise ModelConversionError(
            f"the OpenVINO backend converts a sentence-transformers model folder (with "
            f"modules.json); {model!r} is not one. Pass the model's local folder, or use "
            "--backend torch."
        )
    return path


def _cache_key(folder: Path, precision: Precision) -> str:
    h = hashlib.sha256(f"{_FORMAT}|{precision}|{folder.resolve()}".encode())
    h.update(f"openvino {version('openvino')} nncf {version('nncf')}".encode())
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(folder)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def converted_model(model: str, precision: Precision) -> ConvertedModel:
    """The cached OpenVINO model for `model` at `precision`, converted first if needed."""
    folder = _model_folder(model)
    target = (
        cache_root() / "openvino" / f"{folder.name}-{precision}-{_cache_key(folder, precision)}"
    )
    if not (target / "meta.json").is_file():
        private_dir(cache_root())
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
        try:
            _convert(model, folder, precision, staging)
            try:
                staging.rename(target)
            except OSError:  # another process finished the same conversion first
                if not (target / "meta.json").is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    meta = json.loads((target / "meta.json").read_text())
    return ConvertedModel(
        folder=target,
        source=str(folder),
        pooling=meta["pooling"],
        normalize_layer=meta["normalize_layer"],
        max_seq_length=meta["max_seq_length"],
        pad_token=meta["pad_token"],
        pad_token_id=meta["pad_token_id"],
        fingerprint=ModelFingerprint.from_dict(meta["fingerprint"]),
    )


def _convert(model: str, folder: Path, precision: Precision, dest: Path) -> None:
    """Convert (and for int8, quantize) the transformer; refuse what we cannot mirror."""
    import openvino as ov
    import torch

    st = load_model(str(folder))
    kinds = [type(m).__name__ for m in st.children()]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k != "Normalize" for k in kinds[2:]):
        raise ModelConversionError(
            f"model {model!r} has modules {kinds}; the OpenVINO backend handles Transformer, "
            "Pooling and an optional Normalize. Use --backend torch for this model."
        )
    mode = st[1].get_config_dict().get("pooling_mode")  # type: ignore[operator]
    if mode not in POOLING_MODES:
        raise ModelConversionError(
            f"model {model!r} pools with {mode!r}; the OpenVINO backend supports "
            f"{', '.join(POOLING_MODES)}. Use --backend torch for this model."
        )
    if not st.tokenizer.is_fast:
        raise ModelConversionError(
            f"model {model!r} has no fast tokenizer; use --backend torch for this model"
        )
    example = st.tokenizer(
        ["a short sentence", "and a second one"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        ov_model = ov.convert_model(st[0].auto_model, example_input=dict(example))
    max_len = int(st.max_seq_length or 512)
    if precision == "int8":
        ov_model = _quantize(ov_model, st.tokenizer, max_len)
    ov.save_model(ov_model, str(dest / "model.xml"), compress_to_fp16=False)
    if st.tokenizer.pad_token_id is None:
        raise ModelConversionError(
            f"model {model!r} has no padding token, so batches cannot be padded; use "
            "--backend torch for this model"
        )
    # the tokenizer as `tokenizers` reads it: loading it needs neither transformers nor torch
    st.tokenizer.backend_tokenizer.save(str(dest / "tokenizer.json"))
    fingerprint = fingerprint_of(st, name=model, normalize=False)
    meta = {
        "format": _FORMAT,
        "pad_token": st.tokenizer.pad_token,
        "pad_token_id": st.tokenizer.pad_token_id,
        "precision": precision,
        "pooling": mode,
        "normalize_layer": "Normalize" in kinds,
        "max_seq_length": max_len,
        "fingerprint": fingerprint.to_dict(),
    }
    (dest / "meta.json").write_text(json.dumps(meta, indent=2))


def _calibration_sentences() -> list[str]:
    """Fixed, offline calibration text: first sentences of the standard library's docs."""
    texts = [t for t in stdlib_corpus().column("text").to_pylist() if len(t.split()) >= 4]
    step = max(1, len(texts) // CALIBRATION_SENTENCES)
    return texts[::step][:CALIBRATION_SENTENCES]


def _quantize(ov_model: Any, tokenizer: Any, max_len: int) -> Any:
    import nncf

    texts = _calibration_sentences()
    batches = [
        dict(
            tokenizer(
                texts[i : i + 16],
                padding=True,
                truncation=True,
                max_length=max_len,
                return_tensors="np",
            )
        )
        for i in range(0, len(texts), 16)
    ]
    return nncf.quantize(
        ov_model,
        nncf.Dataset(batches),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(batches),
    )


class OpenVINOModel:
    """A converted model compiled for the CPU: tokenize, infer, pool, normalize."""

    def __init__(
        self,
        converted: ConvertedModel,
        *,
        max_seq_length: int | None,
        num_threads: int | None,
    ) -> None:
        import openvino as ov

        self.converted = converted
        self.max_seq_length = max_seq_length or converted.max_seq_length
        self.tokenizer = _BatchTokenizer(converted, self.max_seq_length)
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",  # no silent bf16: fp32 must equal torch
            "ENABLE_CPU_PINNING": False,  # several worker processes share one machine's cores
        }
        if num_threads:
            config["INFERENCE_NUM_THREADS"] = num_threads
        compiled = ov.Core().compile_model(str(converted.folder / "model.xml"), "CPU", config)
        self._inputs = {i.get_any_name() for i in compiled.inputs}
        self._hidden = next(
            o for o in compiled.outputs if o.get_partial_shape().rank.get_length() == 3
        )
        self._request = compiled.create_infer_request()

    def embed(self, texts: list[str], normalize: bool) -> np.ndarray:
        """Pooled (and, when asked or built in, L2-normalized) vectors of one batch."""
        enc = self.tokenizer.batch(texts)
        result = self._request.infer({k: v for k, v in enc.items() if k in self._inputs})
        hidden = np.asarray(result[self._hidden], dtype=np.float32)
        mask = enc["attention_mask"].astype(np.float32)[..., None]
        if self.converted.pooling == "mean":
            v = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
        elif self.converted.pooling == "cls":
            v = hidden[:, 0]
        else:
            v = np.where(mask > 0, hidden, -1e9).max(1)
        if normalize or self.converted.normalize_layer:
            v = v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)
        return v.astype(np.float32)


class _BatchTokenizer:
    """The model's fast tokenizer through `tokenizers` alone (importing transformers pulls
    in torch: ~1.3 s of every worker's start): padded, truncated batches as the model's
    own tokenizer makes them, and untruncated token counts."""

    def __init__(self, converted: ConvertedModel, max_length: int) -> None:
        from tokenizers import Tokenizer

        path = str(converted.folder / "tokenizer.json")
        self._counting = Tokenizer.from_file(path)
        self._counting.no_padding()
        self._counting.no_truncation()
        self._batching = Tokenizer.from_file(path)
        self._batching.enable_padding(pad_id=converted.pad_token_id, pad_token=converted.pad_token)
        self._batching.enable_truncation(max_length)

    def token_lengths(self, texts: list[str]) -> np.ndarray:
        """Token counts, special tokens included, before truncation."""
        encoded = self._counting.encode_batch(texts)
        return np.fromiter((len(e.ids) for e in encoded), dtype=np.int64, count=len(texts))

    def batch(self, texts: list[str]) -> dict[str, np.ndarray]:
        """input_ids, attention_mask and token_type_ids (int64), padded to the longest."""
        encoded = self._batching.encode_batch(texts)
        return {
            "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64),
        }
