"""`make bench` still runs: every stage of the suite at its smallest size, end to end.

The figures are not checked (benchmarks report; tests never assert a timing), only that
each stage ran, measured, and printed its rows.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_every_benchmark_stage_runs_at_smoke_size():
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--size", "smoke", "--reps", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ")][2:]
    firsts = [row.split(" | ")[0].removeprefix("| ") for row in rows]
    for stage in ("encode 200 docs: embedlib openvino", "index GloVe 40k", "size synthetic",
                  "search over HTTP, gateway", "text query over HTTP", "memory: index build", "lexical engines",
                  "lexical part of the index build", "memory: serve, 2 text collections"):  # fmt: skip
        assert any(f.startswith(stage) for f in firsts), (stage, firsts)
    assert all("nan" not in row for row in rows), rows
