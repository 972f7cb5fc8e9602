"""A demonstration set for image-text training, and a small CLIP to train on it.

`shape_pairs` draws shapes with Pillow (kinds, colours, sizes, positions, jittered) and
captions them ("a small red circle at the top left"); the combinations of colour and
kind named in `held_out` never appear in training, so recall on them measures whether
the model learned the words, not the pictures. `make_tiny_clip` writes a CLIP built
from a `transformers` config (random weights from a seed, a byte-level BPE tokenizer
of the captions' words, a processor for small images) as a folder that
sentence-transformers loads: no weights are downloaded.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

KINDS = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}  # fmt: skip
SIZES = {"small": 0.22, "large": 0.42}  # the shape's extent, as a share of the side
POSITIONS = {
    "top left": (0.27, 0.27), "top right": (0.73, 0.27), "center": (0.5, 0.5),
    "bottom left": (0.27, 0.73), "bottom right": (0.73, 0.73),
}  # fmt: skip
# colour-kind combinations kept out of training (each colour and kind is seen otherwise)
IMAGE_SIDE = 64  # pixels: the drawings' side and the tiny CLIP's input
HELD_OUT = (("red", "triangle"), ("green", "cross"), ("blue", "circle"), ("yellow", "square"))
WORDS = ["a", "an", "the", "small", "large", "at", "top", "bottom", "left", "right", "center",
         "of", "photo", "picture", "shape", *KINDS, *COLOURS]  # fmt: skip


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: str
    position: str

    @property
    def caption(self) -> str:
        return f"a {self.size} {self.colour} {self.kind} at the {self.position}"


def draw(shape: Shape, *, side: int = IMAGE_SIDE, rng: random.Random | None = None) -> bytes:
    """A PNG of `shape` on a light background, its place and size jittered by `rng`."""
    from PIL import Image, ImageDraw

    rng = rng or random.Random(0)
    grey = rng.randint(225, 250)
    img = Image.new("RGB", (side, side), (grey, grey, grey))
    pen = ImageDraw.Draw(img)
    cx, cy = POSITIONS[shape.position]
    cx, cy = (cx + rng.uniform(-0.05, 0.05)) * side, (cy + rng.uniform(-0.05, 0.05)) * side
    r = SIZES[shape.size] * side / 2 * rng.uniform(0.85, 1.15)
    fill = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in COLOURS[shape.colour])
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape.kind == "circle":
        pen.ellipse(box, fill=fill)
    elif shape.kind == "square":
        pen.rectangle(box, fill=fill)
    elif shape.kind == "triangle":
        pen.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    else:  # cross
        w = r / 2.5
        pen.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
        pen.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def all_shapes() -> list[Shape]:
    """Every combination of kind, colour, size and position (160)."""
    return [Shape(k, c, s, p) for k, c, s, p in product(KINDS, COLOURS, SIZES, POSITIONS)]


def shape_pairs(
    per_shape: int = 8,
    *,
    side: int = IMAGE_SIDE,
    seed: int = 0,
    held_out: tuple[tuple[str, str], ...] = HELD_OUT,
) -> tuple[list[tuple[bytes, str]], list[tuple[bytes, str]]]:
    """(train, held-out) image-caption pairs: `per_shape` jittered drawings of each
    training combination; one drawing of each held-out combination."""
    rng = random.Random(seed)
    held = set(held_out)
    train, evaluate = [], []
    for shape in all_shapes():
        if (shape.colour, shape.kind) in held:
            evaluate.append((draw(shape, side=side, rng=rng), shape.caption))
        else:
            train += [(draw(shape, side=side, rng=rng), shape.caption) for _ in range(per_shape)]
    rng.shuffle(train)
    return train, evaluate


def write_pairs(path: Path, per_shape: int = 8, *, side: int = IMAGE_SIDE, seed: int = 0) -> Path:
    """The demonstration pairs as Parquet: `image` (PNG bytes), `caption`, `split`
    ("train" or "eval": the held-out combinations)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    train, evaluate = shape_pairs(per_shape, side=side, seed=seed)
    rows = [(i, c, "train") for i, c in train] + [(i, c, "eval") for i, c in evaluate]
    table = pa.table(
        {
            "image": pa.array([r[0] for r in rows], pa.binary()),
            "caption": [r[1] for r in rows],
            "split": [r[2] for r in rows],
        }
    )
    pq.write_table(table, path)
    return path


def make_tiny_clip(
    folder: Path, *, seed: int = 0, width: int = 64, layers: int = 2,
    image_size: int = IMAGE_SIDE, patch: int = 8, projection: int = 32,
) -> Path:  # fmt: skip
    """Write a small CLIP (random weights from `seed`) into `folder`, a model folder
    sentence-transformers loads as a text-and-image model."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = _word_tokenizer(WORDS)
    heads = max(2, width // 32)
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": width,
                     "intermediate_size": 2 * width, "num_hidden_layers": layers,
                     "num_attention_heads": heads, "max_position_embeddings": 32,
                     "bos_token_id": tokenizer.bos_token_id,
                     "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={"hidden_size": width, "intermediate_size": 2 * width,
                       "num_hidden_layers": layers, "num_attention_heads": heads,
                       "image_size": image_size, "patch_size": patch},
        projection_dim=projection,
    )  # fmt: skip
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    images = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def _word_tokenizer(words: list[str]) -> Any:
    """CLIP's own byte-level BPE (`</w>` ends a word, the sentence ends in
    `<|endoftext|>`, which CLIP's text tower reads), with merges that build each of
    `words` from its letters; any other word still tokenizes, letter by letter. Built by
    hand: the `tokenizers` trainer breaks ties in hash order, a different vocabulary
    (so a different model from the same seed) in every process."""
    from tokenizers import pre_tokenizers
    from transformers.models.clip.tokenization_clip import CLIPTokenizer

    letters = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>", *letters, *(c + "</w>" for c in letters)]
    merges: list[tuple[str, str]] = []
    for word in sorted(dict.fromkeys(words), key=len, reverse=True):  # long words first
        pieces = [*word[:-1], word[-1] + "</w>"]
        head = pieces[0]
        for piece in pieces[1:]:
            merges.append((head, piece))
            head += piece
            tokens.append(head)
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    ranked = list(dict.fromkeys(merges))  # each once, in first-seen order: their rank
    # the tokenizer takes (left, right) pairs, though its annotation says strings
    return CLIPTokenizer(vocab=vocab, merges=ranked, model_max_length=32)  # type: ignore[arg-type]
