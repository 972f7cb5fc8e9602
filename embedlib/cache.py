"""Where embedlib keeps files it can make again: converted models, copies of remote
index shards."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$EMBEDLIB_CACHE, else ~/.cache/embedlib."""
    return Path(os.environ.get("EMBEDLIB_CACHE") or Path.home() / ".cache" / "embedlib")
