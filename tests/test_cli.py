"""The `embedlib` command and the job script, as a user runs them (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from embedlib import EmbeddingSet
from tests import corpora

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
EMBEDLIB = [sys.executable, "-m", "embedlib.cli"]


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600, **kw
    )


def test_job_script_and_cli_take_the_same_options():
    job = _run([sys.executable, "jobs/embed_corpus.py", "--help"])
    cli = _run([*EMBEDLIB, "embed", "--help"])
    assert job.returncode == cli.returncode == 0
    strip = lambda s: s.split("\n", 1)[1]  # noqa: E731 - the usage line names the program
    assert strip(job.stdout) == strip(cli.stdout)
    for flag in ("--text-column", "--id-column", "--columns", "--model", "--batch-size", "--workers",
                 "--cpus-per-worker", "--gpus-per-worker", "--no-normalize", "--max-seq-length",
                 "--address", "--overwrite"):  # fmt: skip
        assert flag in cli.stdout


def test_missing_column_exits_with_a_message_naming_it(tmp_path):
    (tmp_path / "c.parquet").write_bytes(corpora.to_bytes(corpora.table(10), "parquet"))
    r = _run(
        [
            *EMBEDLIB,
            "embed",
            str(tmp_path / "c.parquet"),
            str(tmp_path / "out"),
            "--text-column",
            "nope",
            "--local",
        ]
    )
    assert r.returncode == 2
    assert "error: text column 'nope' not found" in r.stderr and "'body'" in r.stderr


def test_killed_run_resumes_from_committed_shards(tmp_path):
    (tmp_path / "c.jsonl").write_bytes(corpora.to_bytes(corpora.table(600, seed=9), "jsonl"))
    out = tmp_path / "out"
    args = [*EMBEDLIB, "embed", str(tmp_path / "c.jsonl"), str(out), "--text-column", "body",
            "--id-column", "doc_id", "--split-rows", "50", "--local", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(
        args, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while time.time() < deadline and len(list((out / "_commits").glob("*.json"))) < 2:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    committed = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert 2 <= len(committed) < 12 and not (out / "manifest.json").exists()
    r = _run(args)
    assert r.returncode == 0, r.stderr
    assert f"{len(committed)} already committed" in r.stdout
    assert {p: (out / p).stat().st_mtime_ns for p in committed} == committed
    ids = EmbeddingSet(str(out)).read_table(["id"]).column("id").to_pylist()
    assert sorted(ids) == sorted(f"d{i}" for i in range(600))  # every row exactly once
    assert len(list(out.glob("*.parquet"))) == 12
    assert sum(pq.read_metadata(p).num_rows for p in out.glob("*.parquet")) == 600


def test_index_and_pipeline_options_map_to_the_library():
    from embedlib.cli.args import index_options
    from embedlib.cli.commands import build_parser

    args = build_parser().parse_args(
        ["index", "a", "b", "out", "--metric", "l2", "--id-column", "w", "--shards", "3"]
    )
    assert args.embeddings == ["a", "b"] and args.out == "out"
    opts = index_options(args)
    assert (opts.metric, opts.id_column, opts.shards) == ("l2", "w", 3)
    args = build_parser().parse_args(
        ["pipeline", "src", "out", "--metric", "dot", "--id-column", "doc", "--shards", "2"]
    )
    opts = index_options(args)  # the embed options do not leak into the index's
    assert (opts.metric, opts.id_column, opts.shards) == (None, "id", 2)
    assert (args.metric, args.id_column) == ("dot", "doc")


def test_a_command_stops_the_ray_instance_it_started_and_every_process_of_it():
    """`stop_ray` (run when a command ends) kills the local instance's autoscaler monitor
    first (it waits on the stopped GCS otherwise) and leaves no Ray process behind."""
    code = (
        "import psutil\n"
        "from embedlib.distributed import ensure_ray, stop_ray\n"
        "ensure_ray('local', num_cpus=1)\n"
        "kids = psutil.Process().children(recursive=True)\n"
        "assert any('monitor.py' in ' '.join(k.cmdline()) for k in kids), 'no monitor'\n"
        "stop_ray()\n"
        "_, alive = psutil.wait_procs(kids, timeout=5)\n"
        "print('alive', len(alive), 'of', len(kids))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "alive 0 of" in out.stdout, out.stdout


@pytest.mark.usefixtures("ray_cluster")
def test_a_command_run_in_process_leaves_the_callers_ray_up(tmp_path):
    """`main()` stops only a Ray the command connected to itself, not its caller's."""
    import ray

    from embedlib.cli import main

    (tmp_path / "c.parquet").write_bytes(corpora.to_bytes(corpora.table(20), "parquet"))
    args = ["embed", str(tmp_path / "c.parquet"), str(tmp_path / "out"), "--no-progress"]
    assert main([*args, "--text-column", "body"]) == 0
    assert ray.is_initialized() and ray.get(ray.put(7)) == 7
    assert len(EmbeddingSet(str(tmp_path / "out"))) == 20


def test_small_work_runs_in_process_and_ray_when_asked(tmp_path):
    """With no cluster given or running, a small corpus is embedded and indexed in the
    command's own process (no Ray started: its start would cost more than it saves), the
    report says so and why; --ray runs the same on Ray, with the same vectors."""
    (tmp_path / "c.jsonl").write_bytes(corpora.to_bytes(corpora.table(60, seed=4), "jsonl"))
    env = {k: v for k, v in ENV.items() if k != "RAY_ADDRESS"}
    args = [*EMBEDLIB, "embed", str(tmp_path / "c.jsonl"), "--text-column", "body",
            "--id-column", "doc_id", "--no-progress"]  # fmt: skip
    local = subprocess.run([*args, str(tmp_path / "a")], capture_output=True, text=True,
                           env=env, cwd=ROOT, timeout=600)  # fmt: skip
    assert local.returncode == 0, local.stderr
    assert "ran in this process: the corpus" in local.stdout, local.stdout
    assert "Started a local Ray instance" not in local.stderr
    index = _run([*EMBEDLIB, "index", str(tmp_path / "a"), str(tmp_path / "idx"), "--no-progress"])
    assert index.returncode == 0 and "running in this process: the build" in index.stdout
    on_ray = subprocess.run([*args, str(tmp_path / "b"), "--ray"], capture_output=True,
                            text=True, env=env, cwd=ROOT, timeout=600)  # fmt: skip
    assert on_ray.returncode == 0 and "ran on Ray, as asked" in on_ray.stdout, on_ray.stderr
    a, b = EmbeddingSet(str(tmp_path / "a")), EmbeddingSet(str(tmp_path / "b"))
    (ids_a, va), (ids_b, vb) = a.read_vectors(), b.read_vectors()
    assert ids_a == ids_b and float((va * vb).sum(1).min()) >= 0.9999


def test_the_runner_is_chosen_by_what_is_given_and_the_size_of_the_work(monkeypatch):
    from embedlib import RunOptions
    from embedlib.distributed import choose_runner

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr("embedlib.distributed.ray.is_initialized", lambda: False)
    monkeypatch.setattr("embedlib.distributed._live_recorded_cluster", lambda: False)
    auto = RunOptions()
    assert choose_runner(auto, small=True, work="w")[0].runner == "local"
    assert choose_runner(auto, small=False, work="w")[0].runner == "ray"
    assert choose_runner(auto, small=False, work="w", urls=("memory://x",))[0].runner == "local"
    assert choose_runner(RunOptions(runner="ray"), small=True, work="w")[0].runner == "ray"
    assert choose_runner(RunOptions(runner="local"), small=False, work="w")[0].runner == "local"
    assert choose_runner(RunOptions(address="auto"), small=True, work="w")[0].runner == "ray"
    monkeypatch.setattr("embedlib.distributed._live_recorded_cluster", lambda: True)
    run, why = choose_runner(auto, small=True, work="w")
    assert run.runner == "ray" and "ray start" in why


def test_serve_refuses_a_broken_index_or_an_empty_key_before_ray_starts(tmp_path):
    """`embedlib serve` on a mistyped path, a damaged version or with an empty API key
    exits with one line naming the problem, without starting Ray or Serve."""
    from tests.ports import free_port

    port = free_port()
    missing = _run([*EMBEDLIB, "serve", str(tmp_path / "no-such-index"), "--port", str(port)])
    assert missing.returncode != 0 and str(tmp_path / "no-such-index") in missing.stderr
    damaged = tmp_path / "idx" / "versions" / "v-00001"
    damaged.mkdir(parents=True)
    (damaged / "manifest.json").write_text("{ not json")
    (tmp_path / "idx" / "CURRENT").write_text("v-00001")
    broken = _run([*EMBEDLIB, "serve", str(tmp_path / "idx"), "--port", str(port)])
    assert broken.returncode != 0 and "cannot serve" in broken.stderr
    empty = subprocess.run(
        [*EMBEDLIB, "serve", str(tmp_path / "idx"), "--port", str(port)], capture_output=True,
        text=True, env={**ENV, "EMBEDLIB_API_KEY": " "}, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert empty.returncode != 0 and "EMBEDLIB_API_KEY is set but empty" in empty.stderr
    for run in (missing, broken, empty):
        assert "Ray" not in run.stderr + run.stdout and "Traceback" not in run.stderr
