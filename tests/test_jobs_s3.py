"""The pipeline submitted through the real Ray Jobs client to a 2-node cluster started with
`ray start` (token authentication on, as Ray sets it up), reading its corpus from and
writing its outputs to s3:// on an S3-compatible server on 127.0.0.1 (moto), through s3fs;
then the served index is queried over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(os.sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def s3_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "FSSPEC_S3_ENDPOINT_URL": f"http://{host}:{port}",
    }
    yield env
    server.stop()


def _stop(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        time.sleep(3)


def _forget_recorded_address(gcs_port: int) -> None:
    """`ray start` records its address in /tmp/ray/ray_current_cluster and only `ray stop`
    removes it: once the nodes are killed, a plain `ray.init()` on this machine (the
    README's Ray Data example) would wait for the dead cluster. Remove it if it is ours."""
    from ray._common.utils import get_ray_address_file

    recorded = Path(get_ray_address_file(None))
    if recorded.exists() and recorded.read_text().strip().endswith(f":{gcs_port}"):
        recorded.unlink()


@pytest.mark.slow  # multi-node
def test_pipeline_job_on_a_two_node_cluster_with_s3(s3_server, tmp_path, monkeypatch):
    import fsspec

    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)  # for this process's credentials; new processes read all of it
    fs = fsspec.filesystem(
        "s3", endpoint_url=s3_server["FSSPEC_S3_ENDPOINT_URL"], skip_instance_cache=True
    )
    fs.mkdir("corpus-bucket")
    docs = ["cat video", "machine learning tutorial", "buy cheap shoes", "sourdough bread recipe"]
    fs.pipe(
        "corpus-bucket/in/docs.jsonl",
        "".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(docs)).encode(),
    )
    gcs, dash, serve_port = _free_port(), _free_port(), _free_port()
    env = {**os.environ, **s3_server, "RAY_AUTH_MODE": "token", "HF_HUB_OFFLINE": "1"}
    env["PATH"] = f"{Path(RAY).parent}:{env['PATH']}"  # the job's `python` is this environment's
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / "ray.log", "w")  # noqa: SIM115 - the Ray processes write to it until stopped
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--num-cpus", "1", "--port", str(gcs), "--dashboard-host", "127.0.0.1",
         "--dashboard-port", str(dash), "--include-dashboard", "true",
         "--dashboard-agent-listen-port", str(_free_port())],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
    )  # fmt: skip
    worker = None
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{dash}/", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # it answers (with 401: token authentication is on)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                assert head.poll() is None, (tmp_path / "ray.log").read_text()[-2000:]
                time.sleep(2)
        worker = subprocess.Popen(
            [RAY, "start", "--block", "--num-cpus", "1", "--address", f"127.0.0.1:{gcs}",
             "--dashboard-agent-listen-port", str(_free_port())],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )  # fmt: skip
        runtime_env = {
            "excludes": [".venv", ".git"],
            "env_vars": {**s3_server, "HF_HUB_OFFLINE": "1"},
        }
        for _ in range(20):  # the head's job agent may still be starting: it says so
            submit = subprocess.run(
                [RAY, "job", "submit", "--address", f"http://127.0.0.1:{dash}",
                 "--runtime-env-json", json.dumps(runtime_env), "--",
                 "python", str(ROOT / "jobs" / "pipeline.py"), "s3://corpus-bucket/in/docs.jsonl", "s3://corpus-bucket/run",
                 "--shards", "2", "--port", str(serve_port)],
                capture_output=True, text=True, env=env, cwd=ROOT, timeout=900,
            )  # fmt: skip
            if "No available agent" not in submit.stdout + submit.stderr:
                break
            time.sleep(3)
        logs = submit.stdout + submit.stderr
        assert submit.returncode == 0, "\n".join(
            line for line in logs.splitlines() if "INFO" not in line and "WARNING" not in line
        )[-6000:]
        assert "published v-00001" in logs and "serving s3://corpus-bucket/run/index" in logs
        assert fs.exists("corpus-bucket/run/embeddings/manifest.json")
        assert fs.cat("corpus-bucket/run/index/CURRENT").decode().strip() == "v-00001"
        body = json.dumps({"query": "how to train a neural net", "k": 1}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{serve_port}/v1/search",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            assert json.loads(r.read())["results"][0]["text"] == "machine learning tutorial"
    finally:
        if worker is not None:
            _stop(worker)
        _stop(head)
        from embedlib.serve.run import stop_orphaned_haproxy

        stop_orphaned_haproxy()  # Ray leaves Serve's HAProxy running when its nodes are killed
        _forget_recorded_address(gcs)
