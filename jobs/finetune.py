"""Ray job entry point: contrastive fine-tuning on (anchor, positive) pairs, evaluated before and after.

    python jobs/finetune.py PAIRS OUT [--steps 300]
    ray job submit --working-dir . -- python jobs/finetune.py PAIRS OUT [--steps 300]

The options are those of `embedlib finetune` (see --help). Text pairs train in the
driver (one model, all of the node's cores); image-caption pairs (`--image-column`, or
`shapes`) train in the driver too, or data-parallel on Ray Train with `--workers N`
(one worker per node or per GPU: `--gpus-per-worker 1`).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, under ray job submit

from embedlib.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
