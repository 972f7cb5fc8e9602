"""Serving speed of this checkout against an earlier commit, side by side with wrk.

    python -m benchmarks.serve_vs_commit OTHER_CHECKOUT [--vectors 200000] [--rounds 2]

OTHER_CHECKOUT is a work tree of the other commit (`git worktree add /tmp/base COMMIT`);
both run from this venv, each with its own code first on PYTHONPATH. The same vectors
(the scale check's generator: clustered, 384-d, unit length) are indexed by each, then
each index is served by its own code in turn (`embedlib serve`, one at a time, Ray
started and stopped each time) and measured with wrk: vector queries (k=10, 100 bodies
in turn), one connection (p50 latency) and 16 connections (queries/s), `--rounds`
alternations. Prints one Markdown table: the median of the rounds for each, and the
ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parents[1]
D = 384
LUA = """
local bodies = {}
for line in io.lines("%s") do bodies[#bodies + 1] = line end
local n = 0
request = function()
  n = n %% #bodies + 1
  return wrk.format("POST", "/v1/search", {["Content-Type"] = "application/json"}, bodies[n])
end
"""


def vectors(n: int, seed: int) -> np.ndarray:
    """The scale check's generator: 4,096 clusters in 48-d, lifted to 384-d."""
    rng = np.random.default_rng(7)
    centers = rng.standard_normal((4096, 48)).astype("float32") * 1.5
    lift = rng.standard_normal((48, D)).astype("float32") / np.sqrt(48)
    r = np.random.default_rng(seed)
    z = centers[r.integers(0, 4096, n)] + r.standard_normal((n, 48)).astype("float32")
    x = np.tanh(z @ lift) + 0.05 * r.standard_normal((n, D)).astype("float32")
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("float32")


# Run before any import, in the driver and in every Ray worker (they inherit PYTHONPATH):
# an editable install's import hook would otherwise find this checkout's embedlib first.
SITECUSTOMIZE = """import sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in repr(f)]
"""


def env_for(code: Path) -> dict[str, str]:
    shim = Path(tempfile.gettempdir()) / "embedlib-serve-vs-shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": f"{shim}:{code}", "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    return env


def serve(code: Path, index: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "embedlib.cli", "serve", str(index), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env_for(code), stdout=log.open("wb"), cwd=log.parent,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError(f"the server did not start: see {log}")


def wrk(port: int, script: Path, connections: int, seconds: int) -> tuple[float, float]:
    """(p50 ms, requests/s)."""
    out = subprocess.run(
        ["wrk", "-t", str(min(2, connections)), "-c", str(connections), "-d", f"{seconds}s",
         "--latency", "-s", str(script), f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert p50 and rps, out
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p50.group(2)]
    return float(p50.group(1)) * scale, float(rps.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="a work tree of the commit to compare with")
    parser.add_argument("--this", type=Path, default=HERE, help="this side's work tree")
    parser.add_argument("--vectors", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--work", type=Path, help="a folder of an earlier run: reuse its indexes")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="embedlib-serve-vs-"))
    x = vectors(args.vectors, 1)
    ids = pa.array([f"v{i}" for i in range(len(x))])
    vec = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), D)
    pq.write_table(pa.table({"id": ids, "vector": vec}), work / "vectors.parquet")
    bodies = work / "bodies.txt"
    bodies.write_text("".join(json.dumps({"vector": q.tolist(), "k": 10}) + "\n"
                              for q in vectors(100, 99)))  # fmt: skip
    script = work / "bodies.lua"
    script.write_text(LUA % bodies)
    sides = {"this": args.this.resolve(), "other": args.other.resolve()}
    for name, code in sides.items():
        if (work / f"idx-{name}" / "CURRENT").exists():
            continue
        subprocess.run([sys.executable, "-m", "embedlib.cli", "index", str(work / "vectors.parquet"),
                        str(work / f"idx-{name}"), "--metric", "cosine"],
                       env=env_for(code), check=True, capture_output=True, cwd=work)  # fmt: skip
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    for _ in range(args.rounds):
        for n, (name, code) in enumerate(sides.items()):
            port = 18600 + n
            proc = serve(code, work / f"idx-{name}", port, work / f"serve-{name}.log")
            try:
                wrk(port, script, 4, 3)  # warm-up
                p50, _ = wrk(port, script, 1, args.seconds)
                _, qps = wrk(port, script, 16, args.seconds)
                results[name].append((p50, qps))
            finally:
                os.killpg(proc.pid, signal.SIGINT)
                proc.wait(120)
    med = {k: (statistics.median(a for a, _ in v), statistics.median(b for _, b in v))
           for k, v in results.items()}  # fmt: skip
    print(f"{args.vectors:,} x {D}, k=10, {args.rounds} alternations of {args.seconds} s each\n")
    print("| code | 1 connection p50 (ms) | 16 connections (q/s) | rounds (p50 ms, q/s) |")
    print("| --- | --- | --- | --- |")
    for name in sides:
        rounds = ", ".join(f"({a:.2f}, {b:.0f})" for a, b in results[name])
        print(f"| {name} | {med[name][0]:.2f} | {med[name][1]:.0f} | {rounds} |")
    ratio_p50 = med["this"][0] / med["other"][0]
    ratio_qps = med["this"][1] / med["other"][1]
    print(f"| this / other | {ratio_p50:.2f}x | {ratio_qps:.2f}x | |")


if __name__ == "__main__":
    main()
