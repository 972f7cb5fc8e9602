"""Encoding texts with a sentence-transformers model: loaded once, batches length-sorted,
on torch or on OpenVINO (fp32: the same vectors, faster; int8: quantized, fastest); and
images with a CLIP-style model (text and image towers in one space, on torch)."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
from tokenizers import Tokenizer

from embedlib.embed.chunking import Chunker, ChunkOptions
from embedlib.models.fingerprint import (
    ModelFingerprint,
    fingerprint_of,
    is_image_model,
    load_model,
)
from embedlib.models.openvino_backend import INT8_PRECISION, OpenVINOModel, converted_model
from embedlib.options import BACKENDS

if TYPE_CHECKING:
    from PIL.Image import Image


def resolve_backend(backend: str, device: str, model: str | None = None) -> str:
    """`auto` is OpenVINO fp32 on CPU (same vectors as torch, about 2.5x faster), torch
    on a GPU or for an image model (`model`: OpenVINO conversion covers text models only).
    `openvino` is the int8 model; `openvino-fp32` the full-precision one."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    image_model = model is not None and is_image_model(model)
    if backend == "auto":
        return "torch" if device != "cpu" or image_model else "openvino-fp32"
    if backend != "torch" and image_model:
        raise ValueError(
            f"the {backend} backend converts text models only; {model!r} embeds images: "
            "use --backend torch (or auto)"
        )
    if backend != "torch" and device != "cpu":
        raise ValueError(f"the {backend} backend runs on the CPU; use --backend torch on a GPU")
    return backend


def backend_for(fingerprint: ModelFingerprint) -> str:
    """The backend that reproduces vectors of `fingerprint` (query encoders use it)."""
    return "openvino" if fingerprint.precision == INT8_PRECISION else "auto"


class TextEncoder:
    """A loaded model that turns texts into float32 vectors.

    Texts in one `encode` call are sorted by token length before batching, so a batch
    holds texts of similar length and little compute goes to padding; the output is in
    input order. Texts longer than the model's limit are truncated as the model does,
    and counted.
    """

    def __init__(
        self,
        model: str,
        *,
        device: str = "cpu",
        normalize: bool = True,
        max_seq_length: int | None = None,
        dims: int | None = None,
        batch_size: int = 64,
        num_threads: int | None = None,
        backend: str = "auto",
    ) -> None:
        self.model_name = model
        self.backend = resolve_backend(backend, device, model)
        self.normalize = normalize
        self.batch_size = batch_size
        self._chunkers: dict[ChunkOptions, Chunker] = {}
        self.tokens_encoded = 0  # running count (special tokens in, before truncation)
        self.model: Any = None  # the SentenceTransformer (torch backend)
        self.ov: Any = None  # the OpenVINOModel (openvino backends)
        if self.backend == "torch":
            if num_threads is not None:
                import torch

                torch.set_num_threads(num_threads)
            self.model = load_model(model, device=device, max_seq_length=max_seq_length)
            self.max_seq_length = int(self.model.max_seq_length)
            self.fingerprint: ModelFingerprint = fingerprint_of(
                self.model, name=model, normalize=normalize
            )
            self.fingerprint = _cut(self.fingerprint, dims)
            return
        int8 = self.backend == "openvino"
        converted = converted_model(model, "int8" if int8 else "fp32")
        self.ov = OpenVINOModel(converted, max_seq_length=max_seq_length, num_threads=num_threads)
        self.max_seq_length = self.ov.max_seq_length
        self.fingerprint = replace(
            converted.fingerprint,
            normalize=bool(normalize or converted.normalize_layer),
            max_seq_length=self.max_seq_length,
            precision=INT8_PRECISION if int8 else "fp32",
        )
        self.fingerprint = _cut(self.fingerprint, dims)

    @property
    def dim(self) -> int:
        return self.fingerprint.dim

    @property
    def modalities(self) -> tuple[str, ...]:
        """What the model embeds: ("text",), or ("text", "image") for CLIP-style models."""
        if self.model is None:
            return ("text",)
        return tuple(getattr(self.model, "modalities", None) or ("text",))

    def encode_images(self, images: list[Image]) -> np.ndarray:
        """Vectors for `images` (decoded, RGB), in order, from the model's image tower."""
        if "image" not in self.modalities:
            raise ValueError(
                f"model {self.model_name!r} embeds {', '.join(self.modalities)}, not images; "
                "give a CLIP-style sentence-transformers model with --model"
            )
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            list(images),
            batch_size=self.batch_size,
            normalize_embeddings=self.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return self._cut_dims(np.asarray(vectors, dtype=np.float32))

    def chunker(self, options: ChunkOptions) -> Chunker:
        """A `Chunker` counting tokens with this model's tokenizer (truncation off),
        made once per set of options."""
        found = self._chunkers.get(options)
        if found is None:
            tokenizer = self._counting_tokenizer()
            specials = len(tokenizer.encode("", add_special_tokens=True).ids)
            found = Chunker(
                tokenizer,
                capacity=options.tokens or self.max_seq_length - specials,
                overlap=options.overlap,
                max_chunks=options.max_chunks,
            )
            self._chunkers[options] = found
        return found

    def _counting_tokenizer(self) -> Any:
        """The model's fast tokenizer (a `tokenizers.Tokenizer` of its own)."""
        if self.ov is not None:
            return Tokenizer.from_file(str(self.ov.converted.folder / "tokenizer.json"))
        return Tokenizer.from_str(self.model.tokenizer.backend_tokenizer.to_str())

    def token_lengths(self, texts: list[str]) -> np.ndarray:
        """Token counts, special tokens included, before truncation."""
        if not texts:
            return np.zeros(0, dtype=np.int64)
        if self.ov is not None:
            return self.ov.tokenizer.token_lengths(texts)
        encoded = self.model.tokenizer(
            texts,
            add_special_tokens=True,
            truncation=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )
        return np.fromiter((len(x) for x in encoded["input_ids"]), dtype=np.int64, count=len(texts))

    def encode(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """Vectors for `texts` (in order) and how many texts were truncated."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32), 0
        lengths = self.token_lengths(texts)
        self.tokens_encoded += int(lengths.sum())
        order = np.argsort(-lengths, kind="stable")
        ordered = [texts[i] for i in order]
        if self.ov is not None:
            vectors = np.concatenate(
                [
                    self.ov.embed(ordered[i : i + self.batch_size], self.normalize)
                    for i in range(0, len(ordered), self.batch_size)
                ]
            )
        else:
            vectors = self.model.encode(
                ordered,
                batch_size=self.batch_size,
                normalize_embeddings=self.normalize,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        out[order] = self._cut_dims(vectors)
        truncated = int((lengths > self.max_seq_length).sum())
        return out, truncated

    def _cut_dims(self, vectors: np.ndarray) -> np.ndarray:
        """Matryoshka: the leading `dims` dimensions, made unit length again."""
        cut = self.fingerprint.dims
        if cut is None:
            return vectors
        vectors = vectors[:, :cut]
        if self.normalize or self.fingerprint.normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.where(norms > 0, norms, 1)
        return vectors


def _cut(fingerprint: ModelFingerprint, dims: int | None) -> ModelFingerprint:
    """The fingerprint of a model's vectors cut to their first `dims` dimensions
    (Matryoshka models are trained so that these stand alone)."""
    if dims is None or (dims == fingerprint.dim and fingerprint.dims is None):
        return fingerprint
    if dims > fingerprint.dim:
        raise ValueError(
            f"--dims {dims} is more than the {fingerprint.dim} dimensions of model {fingerprint.name!r}"
        )
    return replace(fingerprint, dim=dims, dims=dims)


def query_encoder(fingerprint: ModelFingerprint) -> TextEncoder:
    """The model of an index or embedding set, for query text; refused when the model
    found differs from the one the vectors were made with."""
    encoder = TextEncoder(
        fingerprint.name,
        normalize=fingerprint.normalize,
        max_seq_length=fingerprint.max_seq_length,
        dims=fingerprint.dims,
        backend=backend_for(fingerprint),
    )
    fingerprint.require_compatible(
        encoder.fingerprint, what="the index", other_what="the query encoder"
    )
    return encoder


class QueryModels:
    """Query encoders by model fingerprint, shared by the indexes that agree on it: one
    model in memory per distinct fingerprint (several collections in one server)."""

    def __init__(self) -> None:
        self._models: dict[str, TextEncoder] = {}
        self._lock = threading.Lock()

    def get(self, fingerprint: ModelFingerprint) -> TextEncoder:
        key = json.dumps(fingerprint.to_dict(), sort_keys=True)
        with self._lock:
            if key not in self._models:
                self._models[key] = query_encoder(fingerprint)
            return self._models[key]

    def __len__(self) -> int:
        return len(self._models)


def encode_image_files(encoder: TextEncoder, files: list[bytes]) -> np.ndarray:
    """Query vectors for image files (their bytes), decoded as the embed job decodes
    them; QueryError names an image that cannot be used or a model without an image tower."""
    from embedlib.embed.images import ImageError, decode_image
    from embedlib.exceptions import QueryError

    if "image" not in encoder.modalities:
        raise QueryError(
            f"this index's model ({encoder.model_name}) embeds text only; an image query "
            "needs an index made with a CLIP-style model"
        )
    images = []
    for n, data in enumerate(files):
        try:
            images.append(decode_image(data))
        except ImageError as e:
            raise QueryError(
                f"the query image{f' {n}' if len(files) > 1 else ''} cannot be used: {e}"
            ) from None
    return encoder.encode_images(images)


def encode_batches(encoder: TextEncoder, batches: list[list[str]]) -> list[np.ndarray]:
    """One model call for the texts of several requests; each request gets its rows."""
    vectors, _ = encoder.encode([t for batch in batches for t in batch])
    out, start = [], 0
    for batch in batches:
        out.append(vectors[start : start + len(batch)])
        start += len(batch)
    return out
