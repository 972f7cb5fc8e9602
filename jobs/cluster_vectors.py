"""Ray job entry point: k-means over an embedding set; assignment on Ray tasks.

    python jobs/cluster_vectors.py INPUT OUT --k 20
    ray job submit --working-dir . -- python jobs/cluster_vectors.py INPUT OUT --k 20

The options are those of `embedlib cluster` (see --help).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, under ray job submit

from embedlib.cli import main

if __name__ == "__main__":
    sys.exit(main(["cluster", *sys.argv[1:]]))
