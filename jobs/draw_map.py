"""Ray job entry point: a 2-D map (PNG + HTML) of an embedding set, coloured by cluster.

    python jobs/draw_map.py INPUT OUT [--projection pca|umap]
    ray job submit --working-dir . -- python jobs/draw_map.py INPUT OUT [--projection pca|umap]

The options are those of `embedlib map` (see --help).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, under ray job submit

from embedlib.cli import main

if __name__ == "__main__":
    sys.exit(main(["map", *sys.argv[1:]]))
