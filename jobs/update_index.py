"""Ray job entry point: update a published index (add, change, delete documents) as a
new version.

    python jobs/update_index.py INDEX SOURCE [--delta] [--delete-ids FILE]
    ray job submit --working-dir . -- python jobs/update_index.py INDEX SOURCE

The options are those of `embedlib update` (see --help). Only new and changed documents
are embedded, on Ray actors; the shards are rewritten in the driver.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, under ray job submit

from embedlib.cli import main

if __name__ == "__main__":
    sys.exit(main(["update", *sys.argv[1:]]))
