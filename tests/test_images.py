"""Images (issue 27): image corpora embedded with a CLIP-style model made here (no weights
can be downloaded), equal to plain sentence-transformers; image indexes searched by text
and by image, in the library and over HTTP; thumbnails on the search page; and
contrastive image-text training that lifts held-out recall far above chance."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedlib import EmbeddingSet, EmbedOptions, QueryError, RunOptions, embed_corpus
from embedlib.exceptions import IncompatibleOutputError, VectorError
from embedlib.index import ShardedIndex, build_index
from embedlib.uses.shapes import Shape, draw, make_tiny_clip
from tests.ports import free_port

LOCAL = RunOptions(runner="local", progress=False)
SHAPES = [
    Shape("circle", "red", "large", "center"),
    Shape("square", "blue", "small", "top left"),
    Shape("triangle", "green", "large", "bottom right"),
    Shape("cross", "yellow", "small", "top right"),
    Shape("circle", "blue", "small", "bottom left"),
    Shape("square", "red", "large", "center"),
]
BAD = {  # file -> the reason it is quarantined with
    "broken/truncated.png": "truncated_image",
    "broken/not-an-image.jpg": "not_an_image",
    "broken/bomb.png": "image_too_large",
}


def _png(shape: Shape, side: int = 64) -> bytes:
    import random

    return draw(shape, side=side, rng=random.Random(hash(shape.caption) % 1000))


def _convert(data: bytes, fmt: str, **save: object) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(out, format=fmt, **save)
    return out.getvalue()


def _write_corpus(root: Path) -> dict[str, bytes]:
    """A folder of images in four formats (one GIF of two frames, one JPEG whose EXIF
    says "rotate"), and three files that cannot be used. Returns the good files' bytes
    by id (the path relative to the folder)."""
    from PIL import Image

    files: dict[str, bytes] = {}
    for n, shape in enumerate(SHAPES):
        png = _png(shape)
        fmt = ["PNG", "JPEG", "WEBP", "PNG", "JPEG", "PNG"][n]
        ext = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}[fmt]
        files[f"{'sub/' if n % 2 else ''}{n}-{shape.kind}.{ext}"] = (
            png if fmt == "PNG" else _convert(png, fmt, quality=95)
        )
    # a GIF: the first frame is embedded
    frames = [Image.open(io.BytesIO(_png(s))).convert("P") for s in SHAPES[:2]]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    files["anim.gif"] = gif.getvalue()
    # a JPEG stored sideways, with EXIF orientation 6 (rotate 90 degrees clockwise)
    sideways = Image.open(io.BytesIO(_png(SHAPES[2], side=64))).convert("RGB").crop((0, 0, 64, 40))
    sideways = sideways.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = io.BytesIO()
    sideways.save(rotated, format="JPEG", exif=exif, quality=95)
    files["rotated.jpg"] = rotated.getvalue()
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "broken").mkdir()
    png = files["0-circle.png"]
    (root / "broken/truncated.png").write_bytes(png[: len(png) // 2])
    (root / "broken/not-an-image.jpg").write_bytes(b"just some text, named like a JPEG\n")
    bomb = io.BytesIO()
    Image.new("1", (9000, 9000)).save(bomb, format="PNG")  # 81 Mpx: over the 64 Mpx cap
    (root / "broken/bomb.png").write_bytes(bomb.getvalue())
    return files


def _decoded(data: bytes):
    """The image as a user would hand it to sentence-transformers: EXIF orientation
    applied, the first frame, RGB."""
    from PIL import Image, ImageOps

    return ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    return str(make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", seed=1))


@pytest.fixture(scope="module")
def st_clip(clip):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(clip, device="cpu")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path_factory.mktemp("images")
    return root, _write_corpus(root)


@pytest.fixture(scope="module")
def embedded(corpus, clip) -> Path:
    root, _ = corpus
    out = root.parent / "set"
    embed_corpus(str(root), str(out), options=EmbedOptions(model=clip), run=LOCAL)
    return out


def _quarantined(out: Path) -> dict[str, str]:
    records = [
        json.loads(line)
        for path in sorted((out / "_quarantine").glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    return {r["file"]: r["reason"] for r in records}


def test_a_tiny_clip_embeds_images_and_text_in_one_space(tmp_path, st_clip):
    """Made twice from one seed, the tiny CLIP gives the same vectors; an image and a
    caption land in one space; saved again by sentence-transformers it reloads alike."""
    from sentence_transformers import SentenceTransformer

    other = SentenceTransformer(str(make_tiny_clip(tmp_path / "b", seed=1)), device="cpu")
    pictures = [_decoded(_png(s)) for s in SHAPES[:2]]
    images, captions = st_clip.encode(pictures), st_clip.encode([s.caption for s in SHAPES[:2]])
    assert images.shape == captions.shape == (2, 32)
    assert np.allclose(images, other.encode(pictures), atol=1e-6)
    assert np.allclose(captions, other.encode([s.caption for s in SHAPES[:2]]), atol=1e-6)
    assert not np.allclose(images[0], images[1], atol=1e-3)
    st_clip.save(str(tmp_path / "st"))
    again = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    assert np.allclose(again.encode(pictures), images, atol=1e-6)


def test_an_image_folder_embeds_like_sentence_transformers(corpus, embedded, st_clip):
    """Every good file (PNG, JPEG, WebP, GIF's first frame, EXIF-rotated JPEG) gets the
    vector plain sentence-transformers gives the decoded image (cosine >= 0.9999), its
    id is its relative path, a thumbnail is kept; each bad file is quarantined with its
    reason and nothing else is lost."""
    from PIL import Image

    _, files = corpus
    ids, vectors = EmbeddingSet(str(embedded)).read_vectors()
    assert sorted(ids) == sorted(files)
    want = st_clip.encode([_decoded(files[i]) for i in ids], normalize_embeddings=True)
    cosines = np.sum(vectors * want, axis=1)
    assert cosines.min() >= 0.9999, dict(zip(ids, cosines.round(5), strict=True))
    assert _quarantined(embedded) == BAD
    table = EmbeddingSet(str(embedded)).read_table(["id", "thumbnail", "image"])
    for row in table.to_pylist():
        assert row["image"] == files[row["id"]]  # the original, kept for include=["image"]
        thumb = Image.open(io.BytesIO(row["thumbnail"]))
        assert thumb.format == "JPEG" and max(thumb.size) <= 128
    rotated = Image.open(io.BytesIO(table.to_pylist()[ids.index("rotated.jpg")]["thumbnail"]))
    assert rotated.size[0] > rotated.size[1]  # stored 40x64, EXIF says turn: 64x40 upright
    manifest = json.loads((embedded / "manifest.json").read_text())
    assert manifest["modality"] == "image"


@pytest.mark.usefixtures("ray_cluster")
def test_the_ray_job_equals_the_local_one_and_resumes(corpus, embedded, clip, tmp_path):
    """On Ray workers (split into several tasks) the vectors, ids and quarantine are the
    local run's; run again, the finished job does nothing new."""
    root, _ = corpus
    options = EmbedOptions(model=clip, split_rows=3)
    report = embed_corpus(str(root), str(tmp_path / "ray"), options=options,
                          run=RunOptions(runner="ray", workers=2, progress=False))  # fmt: skip
    assert report.splits >= 3
    a_ids, a = EmbeddingSet(str(tmp_path / "ray")).read_vectors()
    b_ids, b = EmbeddingSet(str(embedded)).read_vectors()
    order = [b_ids.index(i) for i in a_ids]
    assert sorted(a_ids) == sorted(b_ids)
    assert np.sum(a * b[order], axis=1).min() >= 0.9999
    assert _quarantined(tmp_path / "ray") == BAD
    again = embed_corpus(str(root), str(tmp_path / "ray"), options=options,
                         run=RunOptions(runner="ray", workers=2, progress=False))  # fmt: skip
    assert again.splits_done_now == 0 and again.splits_already_committed == report.splits


def test_a_table_with_an_image_column_embeds_images_or_text(tmp_path, corpus, clip, st_clip):
    """Parquet tables with image bytes, or paths relative to the corpus (one to nothing:
    quarantined as missing_image): with --image-column their images are embedded (the
    image files beside them are not rows of their own); without it, their caption
    column is embedded as text, by the same model."""
    _, files = corpus
    src = tmp_path / "src"
    src.mkdir()
    (src / "pics").mkdir()
    (src / "pics/b.png").write_bytes(files["0-circle.png"])
    with_bytes = pa.table({
        "id": ["a", "d"],
        "picture": [files["sub/1-square.jpg"], files["anim.gif"]],
        "caption": [SHAPES[1].caption, SHAPES[0].caption],
    })  # fmt: skip
    with_paths = pa.table({
        "id": ["b", "c"],
        "picture": ["pics/b.png", "pics/nowhere.png"],  # relative to the corpus
        "caption": [SHAPES[0].caption, "nothing"],
    })  # fmt: skip
    pq.write_table(with_bytes, src / "1-bytes.parquet")
    pq.write_table(with_paths, src / "2-paths.parquet")
    images = EmbedOptions(model=clip, image_column="picture", text_column="caption")
    report = embed_corpus(str(src), str(tmp_path / "img"), options=images, run=LOCAL)
    assert report.ignored_files == ["pics/b.png"]  # a file the column points to, not a row
    ids, vectors = EmbeddingSet(str(tmp_path / "img")).read_vectors()
    assert ids == ["a", "d", "b"]
    want = st_clip.encode(
        [_decoded(files[f]) for f in ("sub/1-square.jpg", "anim.gif", "0-circle.png")],
        normalize_embeddings=True,
    )
    assert np.sum(vectors * want, axis=1).min() >= 0.9999
    assert list(_quarantined(tmp_path / "img").items()) == [("2-paths.parquet", "missing_image")]
    texts = EmbedOptions(model=clip, text_column="caption")
    embed_corpus(str(src), str(tmp_path / "txt"), options=texts, run=LOCAL)
    ids, vectors = EmbeddingSet(str(tmp_path / "txt")).read_vectors()
    assert ids == ["a", "d", "b", "c"]
    captions = [SHAPES[1].caption, SHAPES[0].caption, SHAPES[0].caption, "nothing"]
    want = st_clip.encode(captions, normalize_embeddings=True)
    assert np.sum(vectors * want, axis=1).min() >= 0.9999
    # one model, two modalities: one index of both is refused
    with pytest.raises(VectorError, match="image vectors"):
        build_index([str(tmp_path / "img"), str(tmp_path / "txt")], str(tmp_path / "idx"),
                    run=LOCAL)  # fmt: skip
    # another model into the same set: the fingerprint guard refuses to mix them
    other = str(make_tiny_clip(tmp_path / "other-clip", seed=2))
    with pytest.raises(IncompatibleOutputError):
        embed_corpus(str(src), str(tmp_path / "img"), run=LOCAL,
                     options=EmbedOptions(model=other, image_column="picture"))  # fmt: skip
    assert EmbeddingSet(str(tmp_path / "img")).read_vectors()[0] == ["a", "d", "b"]


@pytest.fixture(scope="module")
def image_index(embedded) -> Path:
    out = embedded.parent / "idx"
    build_index(str(embedded), str(out), run=LOCAL)
    return out


def test_the_library_searches_images_by_text_and_by_image(image_index, corpus, st_clip):
    """Text queries rank the images as a brute-force search over sentence-transformers'
    vectors does; an image query finds its own file first; the index records the
    modality; lexical and hybrid modes are refused, naming why."""
    from embedlib import Query

    _, files = corpus
    index = ShardedIndex(str(image_index))
    assert index.manifest.modality == "image"
    ids = sorted(files)
    vectors = st_clip.encode([_decoded(files[i]) for i in ids], normalize_embeddings=True)
    for shape in SHAPES[:3]:
        query = st_clip.encode([shape.caption], normalize_embeddings=True)[0]
        want = [ids[j] for j in np.argsort(-(vectors @ query), kind="stable")[:5]]
        got = [h.id for h in index.query([Query(query=shape.caption, k=5)])[0]]
        assert got == want
    b64 = base64.b64encode(files["sub/3-cross.png"]).decode()
    hits = index.query([Query(image=b64, k=3, include=["thumbnail", "image"])])[0]
    assert hits[0].id == "sub/3-cross.png" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert base64.b64decode(hits[0].image) == files["sub/3-cross.png"]
    assert base64.b64decode(hits[0].thumbnail)[:2] == b"\xff\xd8"  # a JPEG
    for mode in ("lexical", "hybrid"):
        with pytest.raises(QueryError, match="image"):
            index.query([Query(query="a red circle", mode=mode)])[0]
    with pytest.raises(QueryError, match="image"):
        index.query([Query(image=base64.b64encode(b"not an image").decode())])[0]


PORT = free_port()
KEY = "image-key"


def _request(path: str, body=None):
    req = urllib.request.Request(
        f"http://127.0.0.1:{PORT}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def served(image_index, ray_cluster):
    from ray import serve

    from embedlib.serve.app import build_app

    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    serve.run(build_app(str(image_index), api_key=KEY, searcher_cpus=0.1, encoder_cpus=0.2),
              name="images", route_prefix="/")  # fmt: skip
    yield image_index
    serve.shutdown()


def test_text_and_image_queries_over_http(served, corpus):
    """Over HTTP: text queries answer as the library does; an image in the request finds
    similar images (itself first); thumbnails only when asked, the original only when
    asked; hybrid refused; a bad image is a 422 naming it; the collection says image."""
    from embedlib import Query

    _, files = corpus
    index = ShardedIndex(str(served))
    status, body = _request("/v1/search", {"query": SHAPES[0].caption, "k": 4})
    assert status == 200
    assert [h["id"] for h in body["results"]] == [
        h.id for h in index.query([Query(query=SHAPES[0].caption, k=4)])[0]
    ]
    assert all("thumbnail" not in h and "image" not in h for h in body["results"])
    picture = base64.b64encode(files["4-circle.jpg"]).decode()
    status, body = _request("/v1/search", {"image": picture, "k": 3, "include": ["thumbnail"]})
    assert status == 200 and body["results"][0]["id"] == "4-circle.jpg"
    assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)  # the image itself
    library = index.query([Query(image=picture, k=3)])[0]
    assert [h["id"] for h in body["results"]] == [h.id for h in library]
    assert all(base64.b64decode(h["thumbnail"])[:2] == b"\xff\xd8" for h in body["results"])
    assert all("image" not in h for h in body["results"])
    status, body = _request("/v1/search", {"image": picture, "k": 1, "include": ["image"]})
    assert base64.b64decode(body["results"][0]["image"]) == files["4-circle.jpg"]
    status, body = _request("/v1/search", {"query": "a red circle", "mode": "hybrid"})
    assert status in (400, 422) and "image" in json.dumps(body)
    status, body = _request("/v1/search", {"image": "%%% not base64 %%%"})
    assert status == 422 and "base64" in json.dumps(body)
    status, body = _request("/v1/search", {"image": base64.b64encode(b"GIF89a broken").decode()})
    assert status == 422 and "image" in json.dumps(body)
    status, body = _request("/v1/collections")
    assert status == 200
    info = body["collections"][0]
    assert info["modality"] == "image" and info["image_queries"] is True


def test_the_page_shows_a_thumbnail_for_each_image_hit(served):
    """The search page in headless Chromium: each hit of a text query shows its
    thumbnail; "more like this" searches by the hit's image vector."""
    from playwright.sync_api import sync_playwright

    from tests.test_serve import CHROMIUM, CHROMIUM_ARGS, searched

    assert Path(CHROMIUM).exists(), "install Debian's chromium (make setup does)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("dialog", lambda d: d.accept(KEY))
            page.goto(f"http://127.0.0.1:{PORT}/?q=a+large+red+circle")
            page.wait_for_selector("li.hit")
            assert page.locator("li.hit").count() == 8  # every image of the corpus
            assert page.locator("li.hit img.thumb").count() == 8
            loaded = page.locator("li.hit img.thumb").evaluate_all(
                "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)"
            )
            assert loaded == [True] * 8  # each thumbnail decoded by the browser
            first = page.locator("li.hit .id").first.inner_text()
            searched(page, lambda: page.locator("li.hit .more a").first.click())
            assert "like=" in page.url
            assert first not in page.locator("li.hit .id").all_inner_texts()
            assert page.locator("li.hit img.thumb").count() >= 1
        finally:
            browser.close()


def test_training_on_drawn_shapes_lifts_held_out_recall_far_above_chance(tmp_path):
    """`embedlib finetune shapes`: a tiny CLIP (fixed seed) trained on captioned drawings
    finds the held-out colour-kind combinations by text at recall@5 >= 5x chance (before
    training: near chance); the folder it writes embeds and serves as it is, and an index
    of the held-out images answers their captions as the report measured."""
    from embedlib.cli import main

    out = tmp_path / "trained"
    assert main(["finetune", "shapes", str(out), "--steps", "300", "--seed", "0"]) == 0
    report = json.loads((out / "training.json").read_text())
    before, after = report["before"], report["after"]
    assert after["recall_at_5"] >= 5 * after["chance_at_5"]
    assert after["recall_at_1"] >= 3 * after["chance_at_1"]
    assert before["recall_at_5"] < 2 * before["chance_at_5"]
    assert report["losses"][-1] < report["losses"][0] / 1.5
    # the trained folder, as it is, embeds the held-out drawings and answers by text
    assert _index_recall_at_5(out, tmp_path) == pytest.approx(after["recall_at_5"], abs=0.05)


def _index_recall_at_5(model: Path, work: Path) -> float:
    """The held-out drawings embedded with `model` and indexed: the share of their
    captions whose drawing is in the index's top 5."""
    from embedlib import Query
    from embedlib.uses.shapes import shape_pairs

    _, held_out = shape_pairs(8, seed=0)
    folder = work / "held-out"
    folder.mkdir()
    for n, (png, _) in enumerate(held_out):
        (folder / f"{n:02d}.png").write_bytes(png)
    embed_corpus(str(folder), str(work / "set"), options=EmbedOptions(model=str(model)),
                 run=LOCAL)  # fmt: skip
    build_index(str(work / "set"), str(work / "idx"), run=LOCAL)
    index = ShardedIndex(str(work / "idx"))
    found = [
        f"{n:02d}.png" in [h.id for h in index.query([Query(query=caption, k=5)])[0]]
        for n, (_, caption) in enumerate(held_out)
    ]
    return float(np.mean(found))


@pytest.mark.slow  # Ray Train: two worker processes, torch.distributed over gloo (~60 s)
@pytest.mark.usefixtures("ray_cluster")
def test_two_ray_train_workers_reach_the_recall_of_one_process(tmp_path):
    """The same data and seed on 2 Ray Train workers (each half of every batch, features
    gathered so the loss is the whole batch's) and in one process: the same first loss,
    and held-out recall within noise of each other, both far above chance."""
    from embedlib.uses.image_text import train_shapes

    one = train_shapes(str(tmp_path / "one"), steps=200)
    two = train_shapes(str(tmp_path / "two"), steps=200, workers=2, cpus_per_worker=0.9)
    assert two.workers == 2 and one.workers == 0
    assert two.losses[0] == pytest.approx(one.losses[0], rel=1e-4)
    assert abs(two.after.recall_at_5 - one.after.recall_at_5) <= 0.1
    assert abs(two.after.recall_at_1 - one.after.recall_at_1) <= 0.15
    for report in (one, two):
        assert report.after.recall_at_5 >= 5 * report.after.chance_at_5


def test_training_refuses_a_model_without_an_image_tower_naming_the_way_out(tmp_path):
    """A text model cannot be trained on image-caption pairs as it is: the error says to
    give a CLIP folder or add a new image tower; a batch that does not split over the
    workers is refused before anything runs."""
    from embedlib.exceptions import EmbedlibError
    from embedlib.uses.image_text import finetune_image_text, training_folder

    with pytest.raises(EmbedlibError, match="--new-image-tower"):
        training_folder("default")
    with pytest.raises(EmbedlibError, match="multiple of --workers"):
        finetune_image_text("pairs.parquet", str(tmp_path / "o"), model="default",
                            batch_size=63, workers=2)  # fmt: skip


@pytest.mark.slow  # a MiniLM text tower and a new ViT, 300 steps on 2 cores: ~90 s
def test_a_new_image_tower_learns_the_text_models_space(tmp_path):
    """`--model default --new-image-tower --freeze-text`: a small ViT trained into
    all-MiniLM-L6-v2's space finds the held-out drawings by caption at recall@5 >= 5x
    chance; the text vectors stay the model's own; embed and index use the folder as
    it is and answer as the report measured."""
    from embedlib.cli import main
    from embedlib.models.encoders import TextEncoder

    out = tmp_path / "tower"
    argv = ["finetune", "shapes", str(out), "--model", "default", "--new-image-tower",
            "--freeze-text", "--steps", "300"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "training.json").read_text())
    assert report["after"]["recall_at_5"] >= 5 * report["after"]["chance_at_5"]
    assert report["after"]["recall_at_1"] >= 5 * report["after"]["chance_at_1"]
    caption = "a small red triangle at the top left"
    mine = TextEncoder(str(out)).encode([caption])[0][0]
    plain = TextEncoder("default", backend="torch").encode([caption])[0][0]
    assert float(mine @ plain) >= 0.9999
    recall = _index_recall_at_5(out, tmp_path)
    assert recall == pytest.approx(report["after"]["recall_at_5"], abs=0.05)
