"""Ray job entry point: user/item embeddings from interactions, held-out recall@k, the item index.

    python jobs/train_recommender.py INTERACTIONS OUT [--factors 32]
    ray job submit --working-dir . -- python jobs/train_recommender.py INTERACTIONS OUT [--factors 32]

The options are those of `embedlib recommend train` (see --help).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, under ray job submit

from embedlib.cli import main

if __name__ == "__main__":
    sys.exit(main(["recommend", "train", *sys.argv[1:]]))
