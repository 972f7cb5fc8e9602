"""Encoding texts with a sentence-transformers model: loaded once, batches length-sorted."""

from __future__ import annotations

import numpy as np

from embedlib.models import ModelFingerprint, fingerprint_of, load_model


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
        batch_size: int = 64,
        num_threads: int | None = None,
    ) -> None:
        if num_threads is not None:
            import torch

            torch.set_num_threads(num_threads)
        self.model_name = model
        self.model = load_model(model, device=device, max_seq_length=max_seq_length)
        self.normalize = normalize
        self.batch_size = batch_size
        self.fingerprint: ModelFingerprint = fingerprint_of(
            self.model, name=model, normalize=normalize
        )

    @property
    def dim(self) -> int:
        return self.fingerprint.dim

    def token_lengths(self, texts: list[str]) -> np.ndarray:
        """Token counts, special tokens included, before truncation."""
        if not texts:
            return np.zeros(0, dtype=np.int64)
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
        order = np.argsort(-lengths, kind="stable")
        vectors = self.model.encode(
            [texts[i] for i in order],
            batch_size=self.batch_size,
            normalize_embeddings=self.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        out[order] = vectors
        truncated = int((lengths > self.model.max_seq_length).sum())
        return out, truncated
