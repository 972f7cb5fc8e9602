"""Ray job: the whole pipeline, embed -> index -> serve, in one job.

    ray job submit --working-dir . -- python jobs/pipeline.py SOURCE OUT [options]

Writes OUT/embeddings and OUT/index (OUT on storage every node reaches: s3://, gs:// or a
shared path), deploys the Serve application, and returns once it answers; the application
keeps running on the cluster. --no-serve stops after the index. Options: `embedlib
pipeline --help`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, under ray job submit

from embedlib.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
