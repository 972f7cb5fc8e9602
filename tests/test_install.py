"""`pip install embedlib` (no extras) from a wheel of this checkout, in a fresh venv:
the core embeds, indexes and answers; the heavy packages of the extras are absent; a
use whose extra is missing exits 2 naming it. Slow: it installs the whole core stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTRAS_ONLY = ("gensim", "implicit", "matplotlib", "plotly", "umap", "datasets")


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": "local"}
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env, **kw)


@pytest.mark.slow
def test_the_core_installs_lean_and_names_missing_extras(tmp_path):
    wheels = tmp_path / "wheels"
    r = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)]
    )
    assert r.returncode == 0, r.stderr[-2000:]
    [wheel] = wheels.glob("embedlib-*.whl")
    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", str(venv)]).returncode == 0
    py, embedlib = str(venv / "bin" / "python"), str(venv / "bin" / "embedlib")
    for step in (["torch==2.13.0"], [str(wheel)]):  # torch first, as the Makefile does
        r = _run([py, "-m", "pip", "install", "-q", *step])
        assert r.returncode == 0, r.stderr[-2000:]
    r = _run([py, "-c", "import importlib.util as u, json; "
              f"print(json.dumps([m for m in {EXTRAS_ONLY!r} if u.find_spec(m)]))"])  # fmt: skip
    assert json.loads(r.stdout) == [], f"the core install pulls {r.stdout}"
    docs = tmp_path / "docs.jsonl"
    docs.write_text(
        "".join(
            json.dumps({"id": f"d{i}", "text": t}) + "\n"
            for i, t in enumerate(["cat video", "machine learning tutorial", "buy cheap shoes"])
        )
    )
    for cmd in (["embed", str(docs), str(tmp_path / "emb")],
                ["index", str(tmp_path / "emb"), str(tmp_path / "idx")]):  # fmt: skip
        r = _run([embedlib, *cmd])
        assert r.returncode == 0, r.stderr[-2000:]
    r = _run([py, "-c", "from embedlib import ShardedIndex; "
              f"print(ShardedIndex({str(tmp_path / 'idx')!r}).search_text(['how to train a neural net'], 1)[0][0].id)"])  # fmt: skip
    assert r.stdout.strip() == "d1", r.stderr[-2000:]
    for cmd, extra in ((["map", str(tmp_path / "emb"), str(tmp_path / "map")], "maps"),
                       (["train-word2vec", str(docs), str(tmp_path / "w2v")], "words")):  # fmt: skip
        r = _run([embedlib, *cmd])
        assert r.returncode == 2 and f"embedlib[{extra}]" in r.stderr, (cmd, r.stderr[-500:])


@pytest.mark.slow
def test_every_extra_the_readme_shows_resolves_on_a_fresh_venv(tmp_path):
    """`pip install "embedlib[X]"` for each extra, and all of them together, finds a set
    of versions (pip's resolver on a fresh venv; --dry-run installs nothing)."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    readme = (ROOT / "README.md").read_text()
    shown = [e for e in extras if e != "dev" and f"`{e}`" in readme]
    assert {"words", "maps", "recommend", "train", "s3", "gcs", "all"} <= set(shown)
    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", str(venv)]).returncode == 0
    py = str(venv / "bin" / "python")
    # `all` holds every other extra (pinned exactly), so one resolution covers them all
    (held,) = extras["all"]
    assert set(held.split("[", 1)[1].rstrip("]").split(",")) == set(shown) - {"all"}
    r = _run([py, "-m", "pip", "install", "--dry-run", "-q", f"{ROOT}[all]"])
    assert r.returncode == 0, r.stderr[-1500:]
