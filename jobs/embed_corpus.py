"""Ray job: embed a corpus into an embedding set.

    python jobs/embed_corpus.py SOURCE OUT [options]
    ray job submit --working-dir . -- python jobs/embed_corpus.py SOURCE OUT [options]

The options are those of `embedlib embed` (see --help).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, under ray job submit

from embedlib.cli import main

if __name__ == "__main__":
    sys.exit(main(["embed", *sys.argv[1:]]))
