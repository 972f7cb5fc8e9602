"""Ray job entry point: train word2vec (skip-gram or CBOW, gensim) on a corpus into an
embedding set.

    python jobs/train_word2vec.py SOURCE OUT [--cbow] [--dim 100] [--min-count 5]
    ray job submit --working-dir . -- python jobs/train_word2vec.py SOURCE OUT

The options are those of `embedlib train-word2vec` (see --help). Training runs in the
driver with gensim's threads; the corpus is read the way `embedlib embed` reads it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, under ray job submit

from embedlib.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-word2vec", *sys.argv[1:]]))
