"""Ray job: build a sharded, versioned FAISS index from embeddings.

    python jobs/build_index.py EMBEDDINGS [EMBEDDINGS ...] INDEX [options]
    ray job submit --working-dir . -- python jobs/build_index.py EMBEDDINGS INDEX [options]

The options are those of `embedlib index` (see --help).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, under ray job submit

from embedlib.cli import main

if __name__ == "__main__":
    sys.exit(main(["index", *sys.argv[1:]]))
