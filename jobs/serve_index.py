"""Ray job: serve an index over HTTP with Ray Serve.

    python jobs/serve_index.py INDEX [--host 127.0.0.1] [--port 8000] [--replicas R]
    ray job submit --working-dir . -- python jobs/serve_index.py INDEX --detach

With --detach the job returns once the application is ready and the application keeps
running on the cluster. The options are those of `embedlib serve` (see --help).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, under ray job submit

from embedlib.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
