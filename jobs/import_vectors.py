"""Ray job entry point: static word vectors (word2vec, GloVe) as an embedding set.

    python jobs/import_vectors.py SOURCE OUT [--format auto|word2vec|word2vec-binary|glove]
    ray job submit --working-dir . -- python jobs/import_vectors.py glove-6b-50d OUT

The options are those of `embedlib import-vectors` (see --help). The import runs in the
driver: reading a vectors file is one sequential pass.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, under ray job submit

from embedlib.cli import main

if __name__ == "__main__":
    sys.exit(main(["import-vectors", *sys.argv[1:]]))
