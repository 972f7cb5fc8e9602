"""Ray job entry point: contrastive fine-tuning on (anchor, positive) pairs, evaluated before and after.

    python jobs/finetune.py PAIRS OUT [--steps 300]
    ray job submit --working-dir . -- python jobs/finetune.py PAIRS OUT [--steps 300]

The options are those of `embedlib finetune` (see --help). Training runs in the driver
(one model, all of the node's cores).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, under ray job submit

from embedlib.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
