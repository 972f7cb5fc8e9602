"""The embedding job on a real local Ray cluster equals its single-process twin."""

from __future__ import annotations

import numpy as np
import pytest

import embedlib.embed.job as embed_job
from embedlib import EmbeddingSet, EmbedOptions, RunOptions, SourceError, embed_corpus
from tests import corpora

pytestmark = pytest.mark.usefixtures("ray_cluster")
OPTIONS = EmbedOptions(text_column="body", split_rows=40)


def _corpus(root) -> str:
    """Three files, three formats, 330 rows: more shards (8) than workers."""
    src = root / "corpus"
    src.mkdir()
    (src / "a.parquet").write_bytes(
        corpora.to_bytes(corpora.table(150, seed=1), "parquet", row_group_size=25)
    )
    (src / "b.jsonl").write_bytes(corpora.to_bytes(corpora.table(100, seed=2), "jsonl"))
    (src / "c.txt").write_bytes(corpora.to_bytes(corpora.table(80, seed=3), "text"))
    return str(src)


def _rows(out: str) -> dict[str, tuple[str, np.ndarray]]:
    t = EmbeddingSet(out).read_table()
    vecs = EmbeddingSet(out).read_vectors()[1]
    return {
        i: (h, v)
        for i, h, v in zip(
            t.column("id").to_pylist(), t.column("text_hash").to_pylist(), vecs, strict=True
        )
    }


def test_ray_job_equals_local_run(tmp_path):
    src = _corpus(tmp_path)
    ray_report = embed_corpus(
        src, str(tmp_path / "ray"), options=OPTIONS, run=RunOptions(workers=2, progress=False)
    )
    embed_corpus(
        src,
        str(tmp_path / "local"),
        options=OPTIONS,
        run=RunOptions(runner="local", progress=False),
    )
    assert ray_report.splits == 8 and ray_report.documents == 330
    assert sum(n["splits"] for n in ray_report.per_node.values()) == 8
    a, b = _rows(str(tmp_path / "ray")), _rows(str(tmp_path / "local"))
    assert a.keys() == b.keys() and len(a) == 330
    for doc_id, (h, v) in a.items():
        assert h == b[doc_id][0]
        assert float(v @ b[doc_id][1]) >= 0.9999
    ma = EmbeddingSet(str(tmp_path / "ray")).manifest
    mb = EmbeddingSet(str(tmp_path / "local")).manifest
    assert [p.sha256 for p in ma.parts] != [] and ma.model == mb.model
    assert [p.rows for p in ma.parts] == [p.rows for p in mb.parts]


def test_driver_crash_mid_job_resumes_exactly_once(tmp_path, monkeypatch):
    src = _corpus(tmp_path)
    out = str(tmp_path / "out")
    real_commit = embed_job.commit_split
    calls = {"n": 0}

    def crash_after_three(*args, **kwargs):
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the driver dies here: like Ctrl-C between two commits
        calls["n"] += 1
        return real_commit(*args, **kwargs)

    monkeypatch.setattr(embed_job, "commit_split", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        embed_corpus(src, out, options=OPTIONS, run=RunOptions(workers=2, progress=False))
    monkeypatch.setattr(embed_job, "commit_split", real_commit)
    committed = sorted((tmp_path / "out").glob("part-*.parquet"))
    assert len(committed) == 3 and not (tmp_path / "out" / "manifest.json").exists()
    mtimes = {p.name: p.stat().st_mtime_ns for p in committed}
    report = embed_corpus(src, out, options=OPTIONS, run=RunOptions(workers=2, progress=False))
    assert report.splits_already_committed == 3 and report.splits_done_now == 5
    assert {p.name: p.stat().st_mtime_ns for p in committed} == mtimes  # committed shards untouched
    rows = _rows(out)
    assert len(rows) == 330 == report.documents  # every row exactly once
    assert not (tmp_path / "out" / "_attempts").exists()


def test_file_failing_mid_job_names_it_and_keeps_committed_shards(tmp_path, monkeypatch):
    """A file that becomes unreadable after the scan fails the job naming it; the shards
    committed meanwhile stay valid, and a re-run with the file back completes the set."""
    import gzip
    import os

    src = tmp_path / "corpus"
    src.mkdir()
    (src / "a.jsonl").write_bytes(corpora.to_bytes(corpora.table(120, seed=4), "jsonl"))
    good = gzip.compress(corpora.to_bytes(corpora.table(40, seed=5), "jsonl"), mtime=0)
    b = src / "b.jsonl.gz"
    b.write_bytes(good)
    stat = b.stat()
    real_scan = embed_job.scan_and_validate

    def scan_then_break_b(*args, **kwargs):
        job = real_scan(*args, **kwargs)
        b.write_bytes(b"\x1f\x8b" + b"\0" * (len(good) - 2))  # same size, not gzip data
        return job

    monkeypatch.setattr(embed_job, "scan_and_validate", scan_then_break_b)
    out = str(tmp_path / "out")
    options = EmbedOptions(text_column="body", split_rows=40)  # ids: path:row
    with pytest.raises(SourceError, match=r"b\.jsonl\.gz"):
        embed_corpus(str(src), out, options=options, run=RunOptions(workers=1, progress=False))
    monkeypatch.setattr(embed_job, "scan_and_validate", real_scan)
    committed = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("part-*.parquet")}
    assert committed == {
        n: committed[n] for n in ("part-00000.parquet", "part-00001.parquet", "part-00002.parquet")
    }
    b.write_bytes(good)
    os.utime(b, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the same file as planned
    report = embed_corpus(str(src), out, options=options, run=RunOptions(workers=1, progress=False))
    assert report.splits_already_committed == 3 and report.documents == 160
    assert {p: (tmp_path / "out" / p).stat().st_mtime_ns for p in committed} == committed
    rows = _rows(out)
    assert len(rows) == 160 and {i.split(":")[0] for i in rows} == {"a.jsonl", "b.jsonl.gz"}


def test_a_dead_recorded_cluster_is_detected(tmp_path, ray_cluster):
    """`ray start` records its address; once that cluster is gone, jobs start a local Ray
    instead of waiting for it forever."""
    import socket

    from embedlib.distributed import dead_recorded_cluster, raylet_running

    assert raylet_running()  # the session's Ray instance: the address decides

    assert dead_recorded_cluster(str(tmp_path / "missing")) is None
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        (tmp_path / "ray_current_cluster").write_text(f"127.0.0.1:{port}\n")
        assert dead_recorded_cluster(str(tmp_path / "ray_current_cluster")) is None
    assert dead_recorded_cluster(str(tmp_path / "ray_current_cluster")) == f"127.0.0.1:{port}"


def test_a_submitted_jobs_own_env_vars_win(monkeypatch):
    """Inside `ray job submit`, Ray refuses a ray.init runtime env that sets a variable the
    job's runtime env sets too: those are left out, the others kept."""
    import json

    from embedlib.distributed import _beside_job_env

    ours = {"env_vars": {"HF_HUB_OFFLINE": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}}
    assert _beside_job_env(ours) == ours  # not a submitted job
    job = {"runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "0", "AWS_REGION": "x"}}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    assert _beside_job_env(ours) == {"env_vars": {"RAY_SERVE_ENABLE_HA_PROXY": "1"}}
