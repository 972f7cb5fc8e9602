"""Image rows: embedding a folder of images, and the image-text training demonstration.

- encode: N drawn-shape PNGs (64 px) embedded with the tiny CLIP the demonstration
  trains (`embedlib.uses.shapes.make_tiny_clip`, seed 0) by plain single-process
  sentence-transformers (decode with Pillow, `model.encode(images)`) and by
  `embedlib embed` in this process (--local) and on Ray (--ray, 2 workers); whole-process
  wall time, embedding throughput, mean cosine against the plain vectors. The model is
  small, so the rows mostly measure decoding, thumbnails and the job around the model:
  a real CLIP (ViT-B/32) spends far more per image in the model.
- train: `embedlib finetune shapes` in this process and on 2 Ray Train workers, the
  same data and seed, and a new image tower trained into all-MiniLM-L6-v2's space (its
  text tower frozen): wall time, held-out text-to-image recall@1/@5 before and after,
  beside chance.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PY = sys.executable
PLAIN = """
import sys, time, io, numpy as np
from pathlib import Path
from PIL import Image, ImageOps
from sentence_transformers import SentenceTransformer
files = sorted(p for p in Path(sys.argv[1]).rglob('*.png'))
m = SentenceTransformer(sys.argv[2], device='cpu')
t = time.perf_counter()
images = [ImageOps.exif_transpose(Image.open(f)).convert('RGB') for f in files]
v = m.encode(images, batch_size=64, normalize_embeddings=True)
print('encode_seconds', time.perf_counter() - t)
np.save(sys.argv[3], v)
"""


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{r.stderr[-2000:]}")
    return time.perf_counter() - start, r.stdout


def _folder(n: int, folder: Path) -> None:
    """`n` drawings, 1,000 to a sub-folder, named so that sorting them keeps their order."""
    import random

    from embedlib.uses.shapes import all_shapes, draw

    rng = random.Random(7)
    shapes = all_shapes()
    for i in range(n):
        path = folder / f"{i // 1000:03d}" / f"{i:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(draw(shapes[i % len(shapes)], rng=rng))


def encode_rows(work: Path, n: int, reps: int, env: dict[str, str]) -> list[list[str]]:
    from embedlib import EmbeddingSet
    from embedlib.uses.shapes import make_tiny_clip

    folder, model = work / "images", work / "tiny-clip"
    _folder(n, folder)
    make_tiny_clip(model, seed=0)
    runs = {"local": ["--local"], "ray": ["--ray", "--workers", "2"]}
    wall: dict[str, list[float]] = {k: [] for k in ["plain", *runs]}
    rate: dict[str, list[float]] = {k: [] for k in ["plain", *runs]}
    for rep in range(reps):
        seconds, out = _timed([PY, "-c", PLAIN, str(folder), str(model), str(work / "plain.npy")],
                              env)  # fmt: skip
        wall["plain"].append(seconds)
        rate["plain"].append(n / float(out.split()[-1]))
        for name, flags in runs.items():
            seconds, out = _timed([PY, "-m", "embedlib.cli", "embed", str(folder),
                                   str(work / f"{name}-{rep}"), "--model", str(model),
                                   "--no-progress", *flags], env)  # fmt: skip
            wall[name].append(seconds)
            found = re.search(r"embedding ([\d.]+)s", out)
            if found is None:
                raise SystemExit(f"no embedding time in the report of {name}:\n{out}")
            rate[name].append(n / float(found.group(1)))
    plain = np.load(work / "plain.npy")
    rows = []
    for name in ["plain", *runs]:
        cosine = 1.0
        if name != "plain":
            ids, v = EmbeddingSet(str(work / f"{name}-0")).read_vectors()
            cosine = float((v[np.argsort(ids)] * plain).sum(1).mean())
        w, r = statistics.median(wall[name]), statistics.median(rate[name])
        what = {"plain": "plain sentence-transformers", "local": "embedlib --local",
                "ray": "embedlib on Ray, 2 workers"}[name]  # fmt: skip
        rows.append([
            f"embed {n} images (64 px, tiny CLIP): {what}", f"{w:.1f} s",
            f"{statistics.median(wall['plain']) / w:.2f}x", f"{r:.0f} images/s",
            f"{r / statistics.median(rate['plain']):.2f}x", f"cos {cosine:.5f}",
        ])  # fmt: skip
    return rows


def train_rows(work: Path, steps: int, env: dict[str, str]) -> list[list[str]]:
    rows: list[list[str]] = []
    first = 0.0  # the in-process run's wall time: the ratio's base
    runs = {
        "tiny CLIP, this process": [],
        "tiny CLIP, 2 Ray Train workers": ["--workers", "2", "--cpus-per-worker", "0.9"],
        "all-MiniLM-L6-v2 (frozen) + a new 64px ViT, this process": [
            "--model", "default", "--new-image-tower", "--freeze-text",
        ],
    }  # fmt: skip
    for n, (name, flags) in enumerate(runs.items()):
        out = work / f"trained-{n}"
        seconds, _ = _timed([PY, "-m", "embedlib.cli", "finetune", "shapes", str(out),
                             "--steps", str(steps), *flags], env)  # fmt: skip
        first = first or seconds
        report = json.loads((out / "training.json").read_text())
        b, a = report["before"], report["after"]
        rows.append([
            f"image-text training, {steps} steps, {report['train_pairs']} pairs: {name}",
            f"{seconds:.1f} s", f"{first / seconds:.2f}x", "", "",
            f"held-out t->i R@1 {b['recall_at_1']:.3f} -> {a['recall_at_1']:.3f} "
            f"(chance {a['chance_at_1']:.3f}), R@5 {b['recall_at_5']:.3f} -> "
            f"{a['recall_at_5']:.3f} (chance {a['chance_at_5']:.3f}); loss "
            f"{report['losses'][0]:.3f} -> {report['losses'][-1]:.3f}",
        ])  # fmt: skip
    return rows


def image_rows(work: Path, n: int, reps: int, steps: int, env: dict[str, str]) -> list[list[str]]:
    return encode_rows(work, n, reps, env) + train_rows(work, steps, env)
