"""Contrastive image-text training of a CLIP-style model: both towers (or the image
tower alone, `freeze_text`) trained with InfoNCE over in-batch negatives, symmetric
(image -> text and text -> image), the temperature learned (CLIP's `logit_scale`) or set.

It runs in this process, or data-parallel on Ray Train (`workers` >= 1: each worker
takes its share of every batch, gradients are averaged across workers with
torch.distributed, so N workers take the same steps over the same data as one). The
result is a `transformers` CLIP folder that sentence-transformers, `embedlib embed` and
`embedlib serve` load as they are, with `training.json` beside it: the loss curve and
text-to-image recall@1 and @5 on held-out pairs before and after, beside chance.
"""

from __future__ import annotations

import json
import posixpath
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from embedlib.embed.images import ImageError, decode_image
from embedlib.exceptions import EmbedlibError, SourceError
from embedlib.models.fingerprint import resolve_model_path
from embedlib.uses.finetune import read_pair_table, require_columns

REPORT = "training.json"


@dataclass(frozen=True)
class ImageRecall:
    """Text-to-image retrieval on held-out pairs: each caption ranks every held-out
    image; an image with that caption is the answer."""

    recall_at_1: float
    recall_at_5: float
    chance_at_1: float
    chance_at_5: float

    def __str__(self) -> str:
        return (
            f"text->image recall@1 {self.recall_at_1:.3f} (chance {self.chance_at_1:.3f}), "
            f"recall@5 {self.recall_at_5:.3f} (chance {self.chance_at_5:.3f})"
        )


@dataclass
class ImageTextReport:
    output: str
    base_model: str
    train_pairs: int
    eval_pairs: int
    steps: int
    workers: int  # 0: this process; N: Ray Train workers
    before: ImageRecall
    after: ImageRecall
    seconds: float
    losses: list[float] = field(default_factory=list)  # one per step (mean over workers)

    def __str__(self) -> str:
        where = f"{self.workers} Ray Train workers" if self.workers else "this process"
        curve = ", ".join(f"{x:.3f}" for x in self.losses[:: max(1, len(self.losses) // 6)])
        return (
            f"trained image-text model: {self.output} (from {self.base_model})\n"
            f"  {self.steps} steps on {self.train_pairs} pairs in {self.seconds:.0f}s, {where}; "
            f"loss {curve}\n"
            f"  {self.eval_pairs} held-out pairs:\n"
            f"  before: {self.before}\n"
            f"  after:  {self.after}\n"
            f"  embed with it: embedlib embed IMAGES OUT --model {self.output}"
        )


def read_image_pairs(
    source: str,
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    storage_options: dict[str, Any] | None = None,
) -> tuple[list[bytes], list[str], list[str] | None]:
    """Images (file bytes), captions and, when the table has a `split` column, each
    pair's split ("train" / "eval"), from Parquet, JSON Lines or CSV. An image given as a
    path is read relative to the table's folder."""
    table, fs, path = read_pair_table(source, storage_options=storage_options)
    require_columns(
        table, source, {image_column: "--image-column", caption_column: "--caption-column"}
    )
    root = posixpath.dirname(path)
    images: list[bytes] = []
    for value in table.column(image_column).to_pylist():
        if isinstance(value, str):
            value = fs.cat_file(posixpath.join(root, value))
        images.append(bytes(value))
    captions = table.column(caption_column).cast(pa.string()).to_pylist()
    split = table.column("split").to_pylist() if "split" in table.column_names else None
    return images, captions, split


def training_folder(model: str) -> tuple[Path, bool]:
    """The folder training starts from, and whether it is a sentence-transformers model
    with text and image routes (else a `transformers` CLIP folder, or a
    sentence-transformers folder holding one as `0_CLIPModel`)."""
    folder = Path(resolve_model_path(model))
    router = folder / "router_config.json"
    if router.exists() and "image" in json.loads(router.read_text()).get("structure", {}):
        return folder, True
    nested = sorted(folder.glob("*_CLIPModel"))
    if nested:
        folder = nested[0]
    config = folder / "config.json"
    if not config.exists() or "vision_config" not in json.loads(config.read_text()):
        raise EmbedlibError(
            f"{model!r} has no image tower (not a CLIP-style folder); give a CLIP folder "
            "(e.g. sentence-transformers' clip-ViT-B-32), or train a new image tower beside "
            "this text model with --new-image-tower"
        )
    return folder, False


def image_tower_model(
    text_model: str, folder: Path, *, image_size: int = 224, width: int = 192,
    layers: int = 4, patch: int = 16, seed: int = 0,
) -> Path:  # fmt: skip
    """Write into `folder` a sentence-transformers model that embeds text with
    `text_model` (as it is) and images with a new, small ViT (random weights from
    `seed`; mean-pooled, projected to the text model's dimension, normalized): the
    start of training an image tower into a text model's space (`freeze_text`)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Router
    from sentence_transformers.sentence_transformer.modules import (
        Dense,
        Normalize,
        Pooling,
        Transformer,
    )
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    text = SentenceTransformer(str(resolve_model_path(text_model)), device="cpu")
    dim = text.get_embedding_dimension()
    if dim is None:
        raise EmbedlibError(f"{text_model!r} does not say its vector dimension")
    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=width, num_hidden_layers=layers, num_attention_heads=max(1, width // 64),
        intermediate_size=4 * width, image_size=image_size, patch_size=patch,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="embedlib-vit-") as scratch:
        ViTModel(config).save_pretrained(scratch)
        ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(scratch)
        vit = Transformer(scratch)
        image_route = [vit, Pooling(width, pooling_mode="mean"), Dense(width, dim), Normalize()]
        router = Router(
            sub_modules={"text": [*text.children()], "image": image_route},  # type: ignore[list-item]
            route_mappings={(None, "text"): "text", (None, "image"): "image"},
        )
        SentenceTransformer(modules=[router], device="cpu").save(str(folder))
    return folder


def text_to_image_recall(model: Any, images: list[Any], captions: list[str]) -> ImageRecall:
    """Each caption ranks every image by cosine (the sentence-transformers model's own
    vectors); an image whose caption is the same is right."""
    img = model.encode(images, normalize_embeddings=True, convert_to_numpy=True, batch_size=64)
    txt = model.encode(captions, normalize_embeddings=True, convert_to_numpy=True, batch_size=64)
    scores = txt @ img.T
    same = np.array([[a == b for b in captions] for a in captions])
    best_right = np.where(same, scores, -np.inf).max(axis=1)
    rank = (np.where(same, -np.inf, scores) > best_right[:, None]).sum(axis=1)
    right = same.sum(axis=1)
    n = len(captions)
    chance = {k: float(np.mean([1 - _none_in_top(n, r, k) for r in right])) for k in (1, 5)}
    return ImageRecall(float((rank < 1).mean()), float((rank < 5).mean()), chance[1], chance[5])


def _none_in_top(n: int, right: int, k: int) -> float:
    """The chance that none of `right` answers among `n` lands in a random top `k`."""
    p = 1.0
    for i in range(min(k, n)):
        p *= max(0.0, (n - right - i) / (n - i))
    return p


def _batches(captions: list[str], batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """`steps` batches of distinct captions (a repeated caption in a batch would be
    scored as its own negative), walking shuffled epochs."""
    rng = random.Random(seed)
    out: list[list[int]] = []
    order: list[int] = []
    while len(out) < steps:
        if len(order) < batch_size:
            order += rng.sample(range(len(captions)), len(captions))
        batch: list[int] = []
        seen: set[str] = set()
        rest: list[int] = []
        for i in order:
            if len(batch) < batch_size and captions[i] not in seen:
                batch.append(i)
                seen.add(captions[i])
            else:
                rest.append(i)
        order = rest
        out.append(batch)
    return out


class _ClipTowers:
    """A `transformers` CLIP folder: both towers, CLIP's own learned `logit_scale`."""

    def __init__(self, folder: str, device: Any) -> None:
        from transformers import CLIPModel, CLIPProcessor

        self.model: Any = CLIPModel.from_pretrained(folder)
        self.model.to(device)
        self.processor = CLIPProcessor.from_pretrained(folder)
        self.device = device
        self.text_modules: list[Any] = [self.model.text_model, self.model.text_projection]
        self.logit_scale = self.model.logit_scale

    def pixels(self, images: list[Any]) -> Any:
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

    def images(self, pixels: Any) -> Any:
        return _features(self.model.get_image_features(pixel_values=pixels.to(self.device)))

    def texts(self, captions: list[str]) -> Any:
        tokens = self.processor.tokenizer(
            captions, padding=True, truncation=True, return_tensors="pt"
        )
        return _features(self.model.get_text_features(**tokens.to(self.device)))

    def save(self, out: Path) -> None:
        self.model.cpu().save_pretrained(out)
        self.processor.save_pretrained(out)


class _SentenceTowers:
    """A sentence-transformers model routing text and images to their own modules (see
    `image_tower_model`); the temperature, when learned, is a parameter of the training
    only (CLIP's initial 1/0.07)."""

    def __init__(self, folder: str, device: Any) -> None:
        import math

        import torch
        from sentence_transformers import SentenceTransformer

        self.model: Any = SentenceTransformer(folder, device=str(device))
        self.device = device
        router: Any = self.model[0]
        self.text_modules: list[Any] = [router.sub_modules["text"]]
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07), device=device))

    def pixels(self, images: list[Any]) -> Any:
        return self.model.preprocess(images)["pixel_values"]

    def images(self, pixels: Any) -> Any:
        features = {"pixel_values": pixels.to(self.device), "modality": "image", "task": None}
        return self.model(features)["sentence_embedding"]

    def texts(self, captions: list[str]) -> Any:
        features = self.model.preprocess(captions)
        features = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in features.items()}
        return self.model(features)["sentence_embedding"]

    def save(self, out: Path) -> None:
        self.model.cpu().save(str(out))


def train_loop(config: dict[str, Any]) -> None:
    """The training, in this process or as a Ray Train worker's loop. With N workers each
    takes a contiguous 1/N of every batch, the towers' vectors are gathered (with their
    gradients) so every worker scores its rows against the whole batch, and the summed
    gradients are those of one process on the whole batch: N workers take the same steps."""
    import torch
    import torch.nn.functional as F

    rank, world = 0, 1
    if config["workers"]:
        import ray.train

        context = ray.train.get_context()
        rank, world = context.get_world_rank(), context.get_world_size()
        torch.set_num_threads(max(1, config["threads"]))
    device = torch.device("cuda" if config["gpu"] and torch.cuda.is_available() else "cpu")
    torch.manual_seed(config["seed"])
    towers = (_SentenceTowers if config["sentence_transformers"] else _ClipTowers)(
        config["folder"], device
    )
    if config["freeze_text"]:
        for module in towers.text_modules:
            module.requires_grad_(False)
    towers.logit_scale.requires_grad_(config["temperature"] is None)
    captions = config["captions"]
    pixels = towers.pixels([decode_image(b) for b in config["images"]])
    params = [p for p in towers.model.parameters() if p.requires_grad]
    if config["temperature"] is None and not any(p is towers.logit_scale for p in params):
        params.append(towers.logit_scale)
    optimizer = torch.optim.AdamW(params, lr=config["learning_rate"], weight_decay=0.01)
    steps = config["steps"]
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, (steps - s) / steps)
    )
    losses = []
    towers.model.train()
    if config["freeze_text"]:
        for module in towers.text_modules:
            module.eval()  # no dropout in a tower that does not learn
    for batch in _batches(captions, config["batch_size"], steps, config["seed"]):
        share = len(batch) // world
        mine = batch[rank * share : (rank + 1) * share]  # this worker's rows of the batch
        img = F.normalize(towers.images(pixels[mine]), dim=-1)
        with torch.set_grad_enabled(not config["freeze_text"]):
            txt = F.normalize(towers.texts([captions[i] for i in mine]), dim=-1)
        every_img, every_txt = _gather(img, world), _gather(txt, world)
        scale = (
            towers.logit_scale.exp().clamp(max=100)
            if config["temperature"] is None
            else torch.tensor(1.0 / config["temperature"], device=device)
        )
        target = torch.arange(rank * share, (rank + 1) * share, device=device)
        # this worker's rows of the symmetric InfoNCE over the whole batch; summed over
        # the workers, the mean over the batch
        loss = (
            F.cross_entropy(scale * img @ every_txt.T, target, reduction="sum")
            + F.cross_entropy(scale * txt @ every_img.T, target, reduction="sum")
        ) / (2 * share * world)
        optimizer.zero_grad()
        loss.backward()
        value = loss.detach().clone()
        if world > 1:
            import torch.distributed as dist

            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
            dist.all_reduce(value)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(value))
    if rank == 0:
        out = Path(config["out"])
        towers.save(out)
        (out / "losses.json").write_text(json.dumps(losses))


def _gather(local: Any, world: int) -> Any:
    """Every worker's rows, in rank order, with gradients flowing back to their owners."""
    if world == 1:
        return local
    import torch
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(local), dim=0)


def _features(out: Any) -> Any:
    """A tower's projected vectors (transformers returns them bare or as pooler_output)."""
    import torch

    return out if isinstance(out, torch.Tensor) else out.pooler_output


def finetune_image_text(
    pairs: str,
    out: str,
    *,
    model: str,
    image_column: str = "image",
    caption_column: str = "caption",
    eval_pairs: int = 40,
    steps: int = 300,
    batch_size: int = 64,
    learning_rate: float = 5e-5,
    temperature: float | None = None,
    freeze_text: bool = False,
    workers: int = 0,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    gpu: bool | None = None,
    new_image_tower: bool = False,
    image_size: int = 224,
    seed: int = 0,
) -> ImageTextReport:
    """Train the CLIP-style `model` on the image-caption pairs at `pairs` (Parquet, JSONL or CSV; a
    `split` column marks held-out "eval" pairs, else `eval_pairs` are held out at random)
    and save it at `out` (a local folder) with its report. With `new_image_tower`, `model`
    is a text model and a new, small ViT (`image_size` pixels) is trained into its space
    (usually with `freeze_text`). In this process it trains on a GPU when torch sees one
    (unless `gpu` is False); on Ray, with `gpus_per_worker`."""
    start = time.perf_counter()
    if workers and batch_size % workers:
        raise EmbedlibError(
            f"--batch-size {batch_size} does not split evenly over {workers} workers; "
            "give a multiple of --workers"
        )
    target = Path(out)
    if (target / "config.json").exists() or (target / "modules.json").exists():
        raise EmbedlibError(f"{out!r} already holds a model; save the trained one elsewhere")
    if new_image_tower:  # the start: beside the output (every Ray node sees it), then gone
        start_folder = image_tower_model(model, target / "_start", image_size=image_size, seed=seed)
        try:
            report = finetune_image_text(
                pairs, out, model=str(start_folder), image_column=image_column,
                caption_column=caption_column, eval_pairs=eval_pairs, steps=steps,
                batch_size=batch_size, learning_rate=learning_rate, temperature=temperature,
                freeze_text=freeze_text, workers=workers, cpus_per_worker=cpus_per_worker,
                gpus_per_worker=gpus_per_worker, gpu=gpu, seed=seed,
            )  # fmt: skip
        finally:
            shutil.rmtree(start_folder, ignore_errors=True)
        report.base_model = f"{model} + a new {image_size}px image tower"
        (target / REPORT).write_text(json.dumps(asdict(report), indent=2))
        return report
    folder, sentence_transformers = training_folder(model)
    images, captions, split = read_image_pairs(
        pairs, image_column=image_column, caption_column=caption_column
    )
    decoded = []
    for n, data in enumerate(images):
        try:
            decoded.append(decode_image(data))
        except ImageError as e:
            raise SourceError(f"pair {n} of {pairs!r}: the image cannot be used: {e}") from None
    if split is not None:
        held = [i for i, s in enumerate(split) if s == "eval"]
        train = [i for i, s in enumerate(split) if s != "eval"]
    else:
        order = np.random.default_rng(seed).permutation(len(captions))
        held, train = sorted(order[:eval_pairs].tolist()), sorted(order[eval_pairs:].tolist())
    if len({captions[i] for i in train}) < batch_size or not held:
        raise SourceError(
            f"{len(train)} training pairs ({len({captions[i] for i in train})} distinct captions) "
            f"and {len(held)} held-out: training needs at least --batch-size ({batch_size}) "
            "distinct captions and one held-out pair; give more pairs or a smaller --batch-size"
        )
    from sentence_transformers import SentenceTransformer

    eval_images, eval_captions = [decoded[i] for i in held], [captions[i] for i in held]
    before = text_to_image_recall(
        SentenceTransformer(str(folder), device="cpu"), eval_images, eval_captions
    )
    target.mkdir(parents=True, exist_ok=True)
    config = {
        "folder": str(folder), "out": str(target.resolve()), "seed": seed, "steps": steps,
        "batch_size": batch_size, "learning_rate": learning_rate, "temperature": temperature,
        "freeze_text": freeze_text, "workers": workers, "threads": round(cpus_per_worker),
        "gpu": gpus_per_worker > 0 if workers else gpu is not False,
        "sentence_transformers": sentence_transformers,
        "images": [images[i] for i in train], "captions": [captions[i] for i in train],
    }  # fmt: skip
    if workers:
        _train_on_ray(config, workers, cpus_per_worker, gpus_per_worker)
    else:
        train_loop(config)
    losses = json.loads((target / "losses.json").read_text())
    (target / "losses.json").unlink()
    after = text_to_image_recall(
        SentenceTransformer(str(target), device="cpu"), eval_images, eval_captions
    )
    report = ImageTextReport(
        out, model, len(train), len(held), steps, workers, before, after,
        time.perf_counter() - start, losses,
    )  # fmt: skip
    (target / REPORT).write_text(json.dumps(asdict(report), indent=2))
    return report


def _train_on_ray(
    config: dict[str, Any], workers: int, cpus_per_worker: float, gpus_per_worker: float
) -> None:
    """`train_loop` on `workers` Ray Train workers (torch.distributed over gloo, or NCCL
    on GPUs). The folder written is the rank-0 worker's: give a path every node sees."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from embedlib.distributed import ensure_ray

    ensure_ray(None)
    with tempfile.TemporaryDirectory(prefix="embedlib-train-") as storage:
        trainer = TorchTrainer(
            train_loop,
            train_loop_config=config,
            scaling_config=ScalingConfig(
                num_workers=workers,
                use_gpu=gpus_per_worker > 0,
                resources_per_worker={"CPU": cpus_per_worker}
                | ({"GPU": gpus_per_worker} if gpus_per_worker else {}),
            ),
            run_config=RunConfig(storage_path=storage, name="image-text"),
        )
        trainer.fit()


def train_shapes(
    out: str,
    *,
    model: str | None = None,
    per_shape: int = 8,
    steps: int = 300,
    batch_size: int = 64,
    learning_rate: float = 5e-4,
    seed: int = 0,
    **options: Any,
) -> ImageTextReport:
    """The demonstration: image-caption pairs of drawn shapes (some colour-kind
    combinations held out), a tiny CLIP from `seed` unless `model` is given, trained and
    measured on the held-out combinations before and after. Other `options` are
    `finetune_image_text`'s."""
    from embedlib.uses.shapes import IMAGE_SIDE, make_tiny_clip, write_pairs

    with tempfile.TemporaryDirectory(prefix="embedlib-shapes-") as scratch:
        pairs = write_pairs(Path(scratch) / "pairs.parquet", per_shape, seed=seed)
        base = model or str(make_tiny_clip(Path(scratch) / "tiny-clip", seed=seed))
        report = finetune_image_text(
            str(pairs), out, model=base, steps=steps, batch_size=batch_size,
            learning_rate=learning_rate, seed=seed, **options,
        )  # fmt: skip
    if model is None:
        report.base_model = f"a tiny CLIP ({IMAGE_SIDE}px images, random weights, seed {seed})"
        (Path(out) / REPORT).write_text(json.dumps(asdict(report), indent=2))
    return report
